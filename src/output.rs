//! What the commands print to standard output. Rust ignores SIGPIPE, so `print!` panics when
//! the reader went away (`blend-scaler check FILE | head -1`); these return the write error
//! instead, and [`crate::cli::run`] ends quietly with success on a broken pipe, as `head`'s
//! caller expects (the reader asked for no more).

use std::io::{self, Write};

/// `print!` that returns the write error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*))
    };
}

/// `println!` that returns the write error instead of panicking.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {out, outln};

pub(crate) fn write(args: std::fmt::Arguments<'_>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(args)?;
    // Line-buffered or not, a closed pipe is seen at this write, not at exit.
    stdout.flush()
}

/// Whether `e` came from writing to a standard output nobody reads any more.
pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
