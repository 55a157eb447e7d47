//! The store's writer thread. Every write transaction (telemetry group
//! commits, registry changes, the broker's session state) runs on one
//! thread the store owns, in the order submitted.
//!
//! Writes are serialised by the one writer connection anyway, so a single
//! thread costs no parallelism; what it buys is a thread whose scheduling
//! policy the store controls ([`WriterPriority`]). tokio's blocking pool
//! cannot take one: its threads also run `tokio::fs`, DNS and archive work,
//! and an unprivileged thread cannot leave `SCHED_IDLE` once it is there.
//! Reads stay on the blocking pool, at the process's priority.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use crate::{Result, StoreError};

/// How the store's writer and checkpoint threads are scheduled (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriterPriority {
    /// The process's own policy: storage gets its fair share of the CPU.
    #[default]
    Normal,
    /// `SCHED_IDLE`: the threads run only on CPU time nothing else wants,
    /// and any other thread that wakes up preempts them as soon as they
    /// are out of a system call. On a machine the broker and the store
    /// share, MQTT delivery then rarely waits behind a commit
    /// (BENCHMARKS.md, "Where the tail waits"); but next to a CPU-bound
    /// process storage nearly stops, and with it every acknowledgement
    /// (publishers are held back, nothing is lost).
    Idle,
}

type Job = Box<dyn FnOnce() + Send>;

/// The writer thread's queue. Dropping it lets the thread finish the jobs
/// already queued and end; nothing joins it, because the last reference to
/// the store may be dropped by a job on that very thread.
pub(super) struct WriterThread {
    jobs: mpsc::Sender<Job>,
}

impl WriterThread {
    /// Starts the thread, applying `priority` to it first.
    pub(super) fn start(priority: WriterPriority) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                apply(priority, "sqlite-writer");
                while let Ok(job) = queue.recv() {
                    job();
                }
            })
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the writer thread and waits for its result. A panic in
    /// `f` is an error of this call; the thread goes on with the next job.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(StoreError::Database(
                    format!("write transaction panicked: {why}").into(),
                ))
            });
            let _ = answer.send(out);
        });
        self.jobs.send(job).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the store's writer thread has stopped".into())
}

/// Applies `priority` to the calling thread; a failure is logged, and the
/// thread keeps the process's policy.
pub(super) fn apply(priority: WriterPriority, thread: &str) {
    if priority == WriterPriority::Normal {
        return;
    }
    if let Err(why) = set_idle() {
        tracing::warn!(thread, error = %why, "could not lower the store thread's scheduling priority; it keeps the process's");
    }
}

#[cfg(target_os = "linux")]
fn set_idle() -> std::result::Result<(), String> {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_thread_priority_and_policy, thread_native_id,
    };
    set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    )
    .map_err(|e| format!("{e:?}"))
}

#[cfg(not(target_os = "linux"))]
fn set_idle() -> std::result::Result<(), String> {
    Err("SCHED_IDLE exists on Linux only".into())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread: field 41 of
    /// `/proc/thread-self/stat` (proc(5)); 5 is `SCHED_IDLE`.
    fn own_policy() -> Result<u32> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        // Fields after the command name's closing parenthesis start at 3.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        after
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("policy field in {stat:?}")))
    }

    #[tokio::test]
    async fn jobs_run_on_the_writer_thread_with_its_policy() {
        let normal = WriterThread::start(WriterPriority::Normal).expect("start");
        let idle = WriterThread::start(WriterPriority::Idle).expect("start");
        let here = own_policy().expect("policy");
        let name = || Ok(std::thread::current().name().map(str::to_owned));
        assert_eq!(
            normal.run(name).await.expect("run").as_deref(),
            Some("sqlite-writer")
        );
        assert_eq!(normal.run(own_policy).await.expect("run"), here);
        assert_eq!(idle.run(own_policy).await.expect("run"), 5);
        // The caller's thread is untouched.
        assert_eq!(own_policy().expect("policy"), here);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_goes_on() {
        let writer = WriterThread::start(WriterPriority::Normal).expect("start");
        let failed = writer
            .run(|| -> Result<()> { panic!("boom") })
            .await
            .expect_err("a panic is an error");
        assert!(failed.to_string().contains("boom"), "{failed}");
        assert_eq!(writer.run(|| Ok(7)).await.expect("next job runs"), 7);
    }
}
