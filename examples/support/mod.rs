//! What the load runs (`load.rs`, `load_attacks/`) share: their flags, the server process
//! they start, and what /proc says about it.
#![allow(dead_code)] // Each run uses its own part of this module.

use std::process::Child;

/// Each `--flag value` pair of the command line, given to `set`.
pub fn flags(mut set: impl FnMut(&str, String)) {
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        set(&flag, value);
    }
}

/// Kills the server (by its own pid) when the run ends, however it ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A KiB figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), 0 when it cannot be read.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
