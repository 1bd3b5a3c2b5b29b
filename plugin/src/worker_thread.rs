//! The worker thread's lifecycle, on its own: not started when the instance is made (hosts
//! create instances just to scan them), started on first use, stopped and joined once. It knows
//! nothing of what the worker does, so the shared state can own it without an import cycle.

use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;

/// What runs on the thread, given the argument handed over at start.
pub type ThreadMain<A> = Box<dyn FnOnce(A) + Send>;

pub struct WorkerThread<A> {
    slot: Mutex<Slot<A>>,
}

enum Slot<A> {
    NotStarted(ThreadMain<A>),
    Running(JoinHandle<()>),
    Stopped,
}

impl<A: Send + 'static> WorkerThread<A> {
    pub fn new(main: ThreadMain<A>) -> Self {
        Self { slot: Mutex::new(Slot::NotStarted(main)) }
    }

    fn slot(&self) -> MutexGuard<'_, Slot<A>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the thread with `arg()` unless it was started before (or stopped). An error is the
    /// system refusing a thread; the worker then stays stopped (its main was used up).
    pub fn ensure_started(&self, arg: impl FnOnce() -> A) -> std::io::Result<()> {
        let mut slot = self.slot();
        if !matches!(*slot, Slot::NotStarted(_)) {
            return Ok(());
        }
        let Slot::NotStarted(main) = std::mem::replace(&mut *slot, Slot::Stopped) else {
            unreachable!("checked above");
        };
        let arg = arg();
        let handle = std::thread::Builder::new().name("msdm-worker".into()).spawn(move || main(arg))?;
        *slot = Slot::Running(handle);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        matches!(*self.slot(), Slot::Running(_))
    }

    /// If the thread runs: `tell_to_stop()`, then waits for it to end. Afterwards nothing starts
    /// it again.
    pub fn stop(&self, tell_to_stop: impl FnOnce()) {
        let slot = std::mem::replace(&mut *self.slot(), Slot::Stopped);
        if let Slot::Running(handle) = slot {
            tell_to_stop();
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::unbounded;

    #[test]
    fn starts_once_on_first_use_and_stops_for_good() {
        let (tx, rx) = unbounded::<u32>();
        let (done_tx, done_rx) = unbounded::<u32>();
        let t = WorkerThread::new(Box::new(move |first: u32| {
            let sum: u32 = first + rx.iter().take_while(|&x| x != 0).sum::<u32>();
            done_tx.send(sum).unwrap();
        }));
        assert!(!t.is_running());
        t.ensure_started(|| 5).unwrap();
        t.ensure_started(|| panic!("a running worker is not started again")).unwrap();
        assert!(t.is_running());
        tx.send(2).unwrap();
        t.stop(|| tx.send(0).unwrap());
        // joined: the thread's last word is already there
        assert_eq!(done_rx.try_recv(), Ok(7));
        assert!(!t.is_running());
        t.ensure_started(|| panic!("a stopped worker stays stopped")).unwrap();
        t.stop(|| panic!("nothing runs, so nothing is told to stop"));
    }

    #[test]
    fn a_worker_never_started_is_never_told_to_stop() {
        let t = WorkerThread::new(Box::new(|_: ()| panic!("never runs")));
        t.stop(|| panic!("not running"));
        t.ensure_started(|| ()).unwrap();
        assert!(!t.is_running());
    }
}
