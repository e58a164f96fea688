//! Busy polling (`ward daemon --busy-poll`): a worker thread keeps polling for a moment
//! before it sleeps, while clients are sending requests back to back.
//!
//! A client in a request loop (`nix-store -qR`, `nix copy`, a benchmark) sends its next
//! request a few tens of microseconds after it reads a reply. If the worker thread has gone to
//! sleep in the meantime, the kernel has to wake it up on its CPU, and on a virtual machine
//! that is expensive: measured on the 2-CPU VM this project is developed on, a bare blocking
//! ping-pong between two threads costs 65–85 µs per round trip, against 22–33 µs when the
//! answering side keeps polling instead of sleeping. So after a reply, if the previous reply
//! on this thread went out less than one window ago (the client is in a loop), the worker
//! keeps polling its connections, without sleeping, for up to one window (400 µs unless
//! `--busy-poll` says otherwise). Each round it offers its CPU to any other runnable thread
//! (`sched_yield`); if one took it, the CPU is wanted, and the worker stops polling and
//! sleeps, so polling only uses time nobody else wants. A worker that has not answered
//! anything recently never polls: an idle daemon costs nothing.
//!
//! The poller is a task on the worker's runtime that yields in a loop: each yield lets the
//! runtime look for I/O without blocking, and run the connections that became ready.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// A `sched_yield` that takes this long means another thread ran in between: the CPU is
/// contended. An uncontended one takes a microsecond or two.
const CONTENDED: Duration = Duration::from_micros(50);

struct State {
    /// `None`: polling is off on this thread (not a worker, or configured off).
    window: Cell<Option<Duration>>,
    last_reply: Cell<Option<Instant>>,
    /// Until when the poller keeps polling.
    poll_until: Cell<Option<Instant>>,
    /// The poller, when it is waiting for a reason to poll.
    poller: RefCell<Option<Waker>>,
    /// Polling rounds so far, for tests.
    rounds: Cell<u64>,
}

thread_local! {
    static STATE: State = const {
        State {
            window: Cell::new(None),
            last_reply: Cell::new(None),
            poll_until: Cell::new(None),
            poller: RefCell::new(None),
            rounds: Cell::new(0),
        }
    };
}

/// Records that a reply went out on this thread; if the previous one went out less than a
/// window ago, starts (or prolongs) polling for one window. Costs a clock read when polling
/// is on, and nothing when it is off.
pub fn note_reply() {
    STATE.with(|state| {
        let Some(window) = state.window.get() else {
            return;
        };
        let now = Instant::now();
        let previous = state.last_reply.replace(Some(now));
        if previous.is_some_and(|p| now.duration_since(p) < window) {
            state.poll_until.set(Some(now + window));
            if let Some(poller) = state.poller.borrow_mut().take() {
                poller.wake();
            }
        }
    });
}

/// Runs for ever on a worker's (current-thread) runtime: turns polling on for this thread
/// with the given window, and polls whenever [`note_reply`] asks for it.
pub async fn run_poller(window: Duration) {
    STATE.with(|state| state.window.set(Some(window)));
    loop {
        // Wait for a reason to poll.
        std::future::poll_fn(|cx| {
            STATE.with(|state| {
                if state.poll_until.get().is_some() {
                    Poll::Ready(())
                } else {
                    *state.poller.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
        })
        .await;
        // Poll until the window has passed with no new reply.
        while STATE.with(|state| {
            let until = state.poll_until.get();
            if until.is_some_and(|until| Instant::now() < until) {
                true
            } else {
                state.poll_until.set(None);
                false
            }
        }) {
            STATE.with(|state| state.rounds.set(state.rounds.get() + 1));
            // Let any other runnable thread on this CPU (a client, say) go first. If one did
            // run, the CPU is wanted: polling would take time from others, so sleep instead
            // until the next burst.
            let yielded = Instant::now();
            std::thread::yield_now();
            if yielded.elapsed() >= CONTENDED {
                STATE.with(|state| state.poll_until.set(None));
                break;
            }
            // Back to the runtime, which looks for I/O without blocking before resuming us.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds() -> u64 {
        STATE.with(|state| state.rounds.get())
    }

    fn polling() -> bool {
        STATE.with(|state| state.poll_until.get().is_some())
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    const WINDOW: Duration = Duration::from_millis(5);

    #[test]
    fn off_unless_the_poller_runs_on_this_thread() {
        runtime().block_on(async {
            note_reply();
            note_reply();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!polling());
            assert_eq!(rounds(), 0);
        });
    }

    #[test]
    fn a_lone_reply_does_not_start_polling() {
        runtime().block_on(async {
            tokio::spawn(run_poller(WINDOW));
            tokio::task::yield_now().await;
            note_reply();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(rounds(), 0, "polled after a single reply");
            // Replies further apart than the window do not start it either.
            note_reply();
            assert!(!polling());
            assert_eq!(rounds(), 0);
        });
    }

    #[test]
    fn replies_close_together_poll_for_at_most_a_window_then_stop() {
        runtime().block_on(async {
            tokio::spawn(run_poller(WINDOW));
            tokio::task::yield_now().await;
            note_reply();
            note_reply();
            assert!(polling());
            let started = Instant::now();
            // The poller keeps yielding to the runtime, so other tasks and timers still run.
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(rounds() > 0, "no polling after two quick replies");
            while polling() {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "polling did not stop"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // (It may stop sooner, when another thread wants this CPU: tests run in parallel.)
            let after = rounds();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(rounds(), after, "kept polling after the window");
            // After a pause, one reply is not a burst; a second one soon after is.
            note_reply();
            assert!(!polling());
            note_reply();
            assert!(polling());
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(rounds() > after);
        });
    }

    #[test]
    fn polling_stops_when_another_thread_wants_the_cpu() {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        // This thread and a busy one share one CPU: every yield hands the CPU over.
        let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let cpu = (0..CpuSet::count())
            .find(|&c| allowed.is_set(c).unwrap_or(false))
            .unwrap();
        let mut one = CpuSet::new();
        one.set(cpu).unwrap();
        sched_setaffinity(Pid::from_raw(0), &one).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hog = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                sched_setaffinity(Pid::from_raw(0), &one).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let long_window = Duration::from_secs(5);
        let stopped_after = runtime().block_on(async {
            tokio::spawn(run_poller(long_window));
            tokio::task::yield_now().await;
            note_reply();
            note_reply();
            assert!(polling());
            let started = Instant::now();
            while polling() && started.elapsed() < long_window {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            started.elapsed()
        });
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        assert!(
            stopped_after < Duration::from_secs(1),
            "polled for {stopped_after:?} on a CPU another thread wanted"
        );
    }
}
