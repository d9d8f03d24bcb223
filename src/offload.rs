//! CPU-heavy work off the async workers: parsing new trigger metadata, cron searches, and
//! large upstream answers (docs/security.md, "No tenant can stall another").
//!
//! `serve` runs as many async workers as cores (two in the chart), and a handler that
//! computes for a second holds one of them for that second: every other tenant's calls
//! queue behind it. Work handed here runs on tokio's blocking threads instead, and at most
//! half the cores' worth of it at once (at least one), so the workers always keep a core
//! however much a tenant sends: each kind of work has its own queue, so a flood of one kind
//! does not hold back the other.

use std::cell::Cell;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Semaphore;

/// Which queue a piece of work waits in.
#[derive(Clone, Copy, Debug)]
pub enum Work {
    /// Parsing a new or changed trigger's metadata, cron searches.
    Metadata,
    /// Parsing an upstream's answer.
    Answer,
}

thread_local! {
    static OFFLOADED: Cell<bool> = const { Cell::new(false) };
}

static RUNS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

fn permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

static METADATA: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(permits()));
static ANSWER: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(permits()));

/// Runs `f` on a blocking thread once its queue lets it, and returns what it returns. A panic
/// in `f` carries on in the caller, as if `f` had run there.
pub(crate) async fn run<T: Send + 'static>(
    work: Work,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let queue = match work {
        Work::Metadata => &METADATA,
        Work::Answer => &ANSWER,
    };
    // The semaphores are never closed.
    let _permit = queue.acquire().await.ok();
    RUNS[work as usize].fetch_add(1, Ordering::Relaxed);
    let task = tokio::task::spawn_blocking(move || {
        OFFLOADED.with(|o| o.set(true));
        // Cleared however `f` ends: blocking threads are reused.
        let _unmark = Unmark;
        f()
    });
    match task.await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // A blocking task is only cancelled when the runtime shuts down under it.
        Err(_) => panic!("the runtime shut down during offloaded work"),
    }
}

struct Unmark;

impl Drop for Unmark {
    fn drop(&mut self) {
        OFFLOADED.with(|o| o.set(false));
    }
}

/// Whether the caller runs inside [`run`] (for tests that check where work ran).
#[cfg(test)]
pub(crate) fn offloaded() -> bool {
    OFFLOADED.with(Cell::get)
}

/// How many pieces of `work` have been handed to [`run`] in this process (for tests).
pub fn runs(work: Work) -> u64 {
    RUNS[work as usize].load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_off_the_async_workers_and_returns_its_value() {
        assert!(!offloaded());
        let before = runs(Work::Answer);
        let (off, v) = run(Work::Answer, || (offloaded(), 41 + 1)).await;
        assert!(off, "ran on a blocking thread");
        assert_eq!(v, 42);
        assert!(runs(Work::Answer) > before);
        assert!(!offloaded());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_in_offloaded_work_reaches_the_caller() {
        let caught = tokio::spawn(run(Work::Metadata, || panic!("a bug"))).await;
        assert!(caught.unwrap_err().is_panic());
    }
}
