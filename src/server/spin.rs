//! Spinning before parking: after a request arrives, its backend call is sent or its response is
//! ready, a worker keeps polling its sockets for a short window instead of sleeping in the kernel. On a virtual machine
//! a sleeping thread costs tens of microseconds to wake, paid twice per proxied request (when the
//! request arrives and when the backend answers), so a brief spin catches those events while the
//! thread is still running. The spin ends after the window with no activity, so an idle gateway
//! sleeps as before.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

thread_local! {
    static SPIN: RefCell<Option<Rc<Spin>>> = const { RefCell::new(None) };
}

/// A worker set's spin setting: how long to spin, and the counter its spinning time is added to.
#[derive(Debug, Clone, Default)]
pub struct IdleSpin {
    window: Duration,
    spun: Arc<AtomicU64>,
}

impl IdleSpin {
    /// Spins of `window`, each adding its length in nanoseconds to `spun` as it ends.
    pub fn new(window: Duration, spun: Arc<AtomicU64>) -> IdleSpin {
        IdleSpin { window, spun }
    }
}

/// One worker's spinner state, shared by its requests and its spin loop (same thread).
#[derive(Debug, Default)]
struct Spin {
    /// Set by [`busy`], cleared by the loop when it pushes its deadline out.
    active: Cell<bool>,
    /// Whether the loop waits for [`busy`] rather than spinning.
    asleep: Cell<bool>,
    /// Wakes the loop from its sleep.
    wake: Notify,
    /// Turns of the loop, for tests.
    turns: Cell<u64>,
}

/// Marks activity on the current worker: its spin window starts again. Costs a thread-local
/// lookup; does nothing on a thread without a spinner.
pub fn busy() {
    SPIN.with(|spin| {
        if let Some(spin) = &*spin.borrow() {
            spin.active.set(true);
            if spin.asleep.replace(false) {
                spin.wake.notify_one();
            }
        }
    });
}

/// Installs the current thread's spinner and returns its loop, to run inside the thread's
/// runtime's `block_on` for its life: it sleeps until [`busy`], then yields to the runtime (which
/// polls the sockets without sleeping whenever a task yields) until `window` passes with no
/// further activity. The loop never ends; with a zero window nothing is installed and it only
/// waits.
pub fn spinner(setting: IdleSpin) -> impl std::future::Future<Output = ()> {
    let spin = (!setting.window.is_zero()).then(|| {
        let spin = Rc::new(Spin::default());
        spin.asleep.set(true);
        SPIN.with(|s| *s.borrow_mut() = Some(spin.clone()));
        spin
    });
    async move {
        match spin {
            Some(spin) => run(&spin, &setting).await,
            None => std::future::pending().await,
        }
    }
}

async fn run(spin: &Spin, setting: &IdleSpin) {
    let window = setting.window;
    loop {
        // A permit left by an earlier `busy` can end a wait early: the flag decides.
        while spin.asleep.get() {
            spin.wake.notified().await;
        }
        let started = Instant::now();
        let mut deadline = started + window;
        loop {
            // The thread's own yield too: a process that shares this core (the backend on the
            // same host, say) runs now rather than waiting out the spin.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            spin.turns.set(spin.turns.get() + 1);
            let now = Instant::now();
            if spin.active.replace(false) {
                deadline = now + window;
            } else if now >= deadline {
                let spun = u64::try_from((now - started).as_nanos()).unwrap_or(u64::MAX);
                setting.spun.fetch_add(spun, Ordering::Relaxed);
                break;
            }
        }
        spin.asleep.set(true);
    }
}

#[cfg(test)]
fn state() -> Option<(bool, u64)> {
    SPIN.with(|s| s.borrow().as_ref().map(|s| (s.asleep.get(), s.turns.get())))
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    /// Runs `check` on a current-thread runtime whose block_on future also runs the spin loop,
    /// as a worker does.
    fn on_worker(setting: IdleSpin, check: impl std::future::Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let spin = spinner(setting);
        runtime.block_on(async {
            tokio::select! {
                _ = spin => unreachable!("the spin loop never ends"),
                _ = check => {}
            }
        });
    }

    #[test]
    fn busy_starts_a_spin_that_ends_after_the_window() {
        let spun = Arc::new(AtomicU64::new(0));
        let setting = IdleSpin::new(Duration::from_millis(200), spun.clone());
        on_worker(setting, async {
            tokio::task::yield_now().await;
            let (asleep, turns) = state().unwrap();
            assert!(asleep, "no spin before any activity");
            assert_eq!(turns, 0);
            busy();
            // The runtime keeps polling while this task sleeps on a timer: the loop turns.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (asleep, during) = state().unwrap();
            assert!(!asleep);
            assert!(during > 3, "the loop turned only {during} times");
            // Well past the window with no activity, the loop sleeps and stops turning.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let (asleep, after) = state().unwrap();
            assert!(asleep, "still spinning after the window");
            // The spin that ended lasted at least its window, and was counted.
            let counted = Duration::from_nanos(spun.load(Ordering::Relaxed));
            assert!(counted >= Duration::from_millis(200), "{counted:?}");
            assert!(counted < Duration::from_millis(410), "{counted:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(state().unwrap().1, after);
            // Activity wakes it again.
            busy();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(state().unwrap().1 > after);
        });
    }

    #[test]
    fn activity_keeps_it_spinning() {
        on_worker(
            IdleSpin::new(Duration::from_millis(200), Default::default()),
            async {
                busy();
                // Three windows long in all, with activity every tenth of one.
                for _ in 0..30 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    assert!(!state().unwrap().0, "stopped while activity went on");
                    busy();
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
                assert!(
                    state().unwrap().0,
                    "still spinning after the activity stopped"
                );
            },
        );
    }

    #[test]
    fn a_zero_window_never_spins() {
        on_worker(IdleSpin::default(), async {
            busy();
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(state(), None, "no spinner is installed");
        });
    }
}
