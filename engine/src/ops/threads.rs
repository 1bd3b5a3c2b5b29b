//! CPU threads for the kernels: how the work reaches rayon's workers ([`on_workers`]), candle's own
//! element-wise pool ([`configure_cpu_threads`], processes we own only), and pools whose threads
//! their owner stops and joins ([`ComputePool`], for hosts such as a DAW that load and unload us).

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Tunes candle's own CPU thread pool for this workload; call once at the start of `main`, before
/// any tensor work and before other threads exist (it sets environment variables that candle reads
/// once). candle's element-wise ops run on a spin-waiting pool next to rayon's (which gemm and our
/// kernels use); its worker spins for 25,000 rounds after every op, stealing a core from the next
/// gemm, and the calling thread spins (never sleeps) while a descheduled worker finishes, which on
/// a busy machine costs more than the op. With the heavy ops in our own kernels, the element-wise
/// ops left to candle (residual adds, concatenations, the preconditioning) run well on the calling
/// thread alone, so this sets `CANDLE_NUM_THREADS=1` (rayon's pool, `RAYON_NUM_THREADS`, still
/// sizes gemm and our kernels). Nothing is changed when `CANDLE_NUM_THREADS` or
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is already set.
pub fn configure_cpu_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() && std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Runs `f` (CPU work) on one of rayon's worker threads, so that the parallel kernels inside it
/// fork and join within the pool; called from outside, each of them would inject its work into the
/// pool and put the calling thread to sleep until it is done (a futex wake-up per op, which cost
/// the bundled model's small network about a third of its call).
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// A rayon pool whose threads are stopped and joined when it is dropped.
///
/// rayon's global pool and a plain `ThreadPool` both leave their threads running after use (a
/// dropped `ThreadPool` only asks them to exit). Inside a host that closes sessions and may
/// unload our library, a thread of ours still alive after the instance is gone runs code that
/// may be unmapped under it. Work run through [`ComputePool::install`] (gemm, our kernels,
/// [`on_workers`]) stays on this pool's threads.
pub struct ComputePool {
    pool: Option<rayon::ThreadPool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl ComputePool {
    /// A pool of `threads` threads (0: one per available core) named `{name}-{i}`.
    pub fn new(name: &str, threads: usize) -> anyhow::Result<ComputePool> {
        let handles: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let spawned = Arc::clone(&handles);
        let name = name.to_string();
        let n = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .spawn_handler(move |thread| {
                let handle = std::thread::Builder::new()
                    .name(format!("{name}-{}", thread.index()))
                    .spawn(move || thread.run())?;
                spawned.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
                Ok(())
            })
            .build()
            .map_err(|e| anyhow::anyhow!("cannot start the compute threads: {e}"))?;
        Ok(ComputePool { pool: Some(pool), threads: handles })
    }

    /// Runs `f` on one of the pool's threads; parallel work inside it stays in the pool.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        let inside = self.pool.as_ref().and_then(|p| p.current_thread_index()).is_some();
        // Dropping the rayon pool tells its threads to exit once their work is done.
        drop(self.pool.take());
        if inside {
            // Dropped from one of its own threads: joining would wait for ourselves.
            return;
        }
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}
