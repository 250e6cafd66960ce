//! The request workers: one single-threaded tokio runtime per core, each serving whole
//! connections. A connection, its requests and the backend connections those requests use stay
//! on one thread, so no request wakes another thread (on a virtual machine a cross-thread wake-up
//! costs more than the gateway's own work for a small request).

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::spin::IdleSpin;

/// How long a stopping worker waits for its blocking tasks.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(500);

/// Every worker thread of the process gets its own serial, so state made by one worker's
/// runtime is never used by a worker of another set that happens to have the same index.
static SERIALS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT: Cell<Option<Worker>> = const { Cell::new(None) };
}

/// Which worker the current thread is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    /// Its index in its set, below `count`.
    pub index: usize,
    /// How many workers its set has.
    pub count: usize,
    /// Unique in the process.
    pub serial: u64,
}

/// The worker running the current thread, if it is one.
pub fn current() -> Option<Worker> {
    CURRENT.with(Cell::get)
}

/// A set of worker threads, each with its own runtime; dropping it stops them, cancelling what
/// they still run.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads (at least one), each spinning for `idle_spin` after
    /// activity before it sleeps (see [`spin`](super::spin)).
    pub fn start(count: usize, idle_spin: IdleSpin) -> std::io::Result<Workers> {
        let count = count.max(1);
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
            next: AtomicUsize::new(0),
            stops: Vec::with_capacity(count),
            threads: Vec::with_capacity(count),
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let worker = Worker {
                index,
                count,
                serial: SERIALS.fetch_add(1, Ordering::Relaxed),
            };
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop);
            let idle_spin = idle_spin.clone();
            let thread = std::thread::Builder::new()
                .name(format!("protogate-worker-{index}"))
                .spawn(move || {
                    CURRENT.with(|current| current.set(Some(worker)));
                    // Spawned connections run while the thread waits here for the stop.
                    let spin = super::spin::spinner(idle_spin);
                    runtime.block_on(async {
                        tokio::select! {
                            _ = stopped => {}
                            _ = spin => {}
                        }
                    });
                    // A blocking task still running (a DNS lookup) must not hold the stop up.
                    runtime.shutdown_timeout(SHUTDOWN_WAIT);
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether there are none (never: `start` makes at least one).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker in turn.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(task);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        // A worker is joined unless this runs on it (a worker never owns its own set).
        let me = std::thread::current().id();
        for thread in self.threads.drain(..) {
            if thread.thread().id() != me {
                let _ = thread.join();
            }
        }
    }
}

/// The default number of workers: one per core.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn tasks_go_round_robin_and_know_their_worker() {
        let workers = Workers::start(2, IdleSpin::default()).unwrap();
        assert_eq!(workers.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(async move {
                let _ = tx.send((current(), std::thread::current().id()));
            });
        }
        let seen: Vec<_> = (0..4).map(|_| rx.recv().unwrap()).collect();
        let mut indexes: Vec<usize> = seen.iter().map(|(w, _)| w.unwrap().index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 0, 1, 1]);
        // Each worker is one thread, and the two differ.
        for (w, thread) in &seen {
            let same = seen
                .iter()
                .filter(|(v, _)| v == w)
                .all(|(_, t)| t == thread);
            assert!(same);
        }
        let thread_of = |index: usize| {
            seen.iter()
                .find(|(w, _)| w.unwrap().index == index)
                .map(|(_, t)| *t)
        };
        assert_ne!(thread_of(0), thread_of(1));
        assert_eq!(current(), None, "the test thread is no worker");
        let serials: std::collections::BTreeSet<u64> =
            seen.iter().map(|(w, _)| w.unwrap().serial).collect();
        assert_eq!(serials.len(), 2);
    }

    #[test]
    fn dropping_the_set_stops_its_threads_and_cancels_their_tasks() {
        let workers = Workers::start(
            1,
            IdleSpin::new(Duration::from_micros(50), Default::default()),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The task, and the sender it held, were dropped with the runtime.
        assert!(rx.recv().is_err());
    }
}
