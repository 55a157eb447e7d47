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
//!
//! Under [`WriterPriority::Adaptive`] a second thread, `sqlite-standby`,
//! keeps the process's policy and watches the queue. When the oldest
//! queued job has waited longer than the takeover bound (the `SCHED_IDLE`
//! writer is starved, or stuck in a long job), it takes the queue over
//! and runs the jobs itself, still one at a time and in order, after the
//! job in progress, which cannot move between threads. The idle writer
//! takes no job while the queue is taken over; it wakes every few bounds
//! and hands the queue back when it was scheduled on time, i.e. when CPU
//! time is free again (decision 0020).
//!
//! The writer also runs *background work* ([`WriterThread::set_background`]):
//! one bounded step at a time, only while its queue is empty, so a queued
//! job waits for at most one step. The telemetry store moves staged rows
//! into their tables this way, off the acknowledgement's transaction
//! (decision 0023). Background work runs on `sqlite-writer` only: while the
//! queue is taken over the writer is starved of CPU time, and the work
//! waits with it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

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
    /// `SCHED_IDLE` while the writer keeps up, and a thread at the
    /// process's policy that takes the queue over when a write has waited
    /// longer than the takeover bound: `Idle`'s delivery latency, with
    /// storage never starved for longer than the bound plus the one
    /// transaction in progress.
    Adaptive,
}

/// What the writer threads have done, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Times the standby thread took the queue over from the idle writer.
    pub takeovers: u64,
    /// Whether the standby thread holds the queue now.
    pub taken_over: bool,
    /// Staged telemetry rows the background work has still to move
    /// (decision 0023), as the committer last saw them.
    pub staged_rows: u64,
}

type Job = Box<dyn FnOnce() + Send>;

/// When background work wants its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// As soon as the queue is empty.
    Now,
    /// After this long, or after the next job, whichever comes first.
    After(Duration),
    /// After the next job: nothing is due until something is written.
    AfterNextJob,
}

/// One step of background work; see [`WriterThread::set_background`].
pub(super) type Background = Box<dyn FnMut() -> Next + Send>;

/// A job and when it was queued.
struct Queued {
    at: Instant,
    job: Job,
}

/// The queue and who may run it, behind one lock.
#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// A job is running (on either thread). Jobs run one at a time, in the
    /// order queued, whichever thread runs them.
    busy: bool,
    /// The standby thread runs the queue; the idle writer takes no job.
    taken_over: bool,
    /// The standby thread sleeps until a job is queued (the queue was
    /// empty when it last looked).
    standby_parked: bool,
    /// The idle writer waits on its condition variable. A wake-up is sent
    /// only then: std's `notify_one` is a system call even when nobody
    /// waits, and jobs are queued several hundred times a second.
    writer_waits: bool,
    /// The store is dropped: finish what is queued, then end.
    closed: bool,
    takeovers: u64,
    /// Background work, when set and not running (it is taken out while
    /// it runs).
    background: Option<Background>,
    /// When its next step is due; `None` until the next job ends.
    background_due: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes `sqlite-writer`: a job was queued, or the store closed.
    writer: Condvar,
    /// Wakes `sqlite-standby`: a job was queued or ended, the queue was
    /// handed back, or the store closed.
    standby: Condvar,
    /// How long the oldest queued job may wait before the standby thread
    /// takes the queue over.
    takeover_after: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Jobs run outside the lock and their panics are caught, so a
        // poisoned lock would only mean a panic in this module's own few
        // lines; the state is still consistent then.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `job` outside the lock, marking the queue busy meanwhile.
    fn run<'a>(&'a self, mut state: MutexGuard<'a, State>, job: Job) -> MutexGuard<'a, State> {
        state.busy = true;
        drop(state);
        job();
        let mut state = self.lock();
        state.busy = false;
        // A job may have given the background work something to do.
        if state.background.is_some() {
            state.background_due = Some(Instant::now());
        }
        // Whoever holds the queue now may be waiting for this job to end:
        // the queue may have been taken over, or handed back, meanwhile.
        if state.taken_over {
            self.standby.notify_one();
        } else if !state.queue.is_empty() && state.writer_waits {
            self.writer.notify_one();
        }
        state
    }

    /// How often the idle writer checks whether it may have the queue
    /// back, and how late it may wake to get it.
    fn probe(&self) -> (Duration, Duration) {
        (self.takeover_after * 4, self.takeover_after / 8)
    }
}

/// The writer thread's queue (and, under [`WriterPriority::Adaptive`], the
/// standby thread's). Dropping it lets the threads finish the jobs already
/// queued and end; nothing joins them, because the last reference to the
/// store may be dropped by a job on one of them.
pub(super) struct WriterThread {
    shared: Arc<Shared>,
}

impl WriterThread {
    /// Starts the thread(s), applying `priority` first. `takeover_after`
    /// matters under [`WriterPriority::Adaptive`] only.
    pub(super) fn start(priority: WriterPriority, takeover_after: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer: Condvar::new(),
            standby: Condvar::new(),
            takeover_after: takeover_after.max(Duration::from_millis(1)),
        });
        let this = Self {
            shared: Arc::clone(&shared),
        };
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(body)
                .map(drop)
                .map_err(|e| StoreError::Database(Box::new(e)))
        };
        if priority == WriterPriority::Adaptive {
            let standby = Arc::clone(&shared);
            spawn("sqlite-standby", Box::new(move || standby_loop(&standby)))?;
        }
        // On an error from here on, dropping `this` closes the queue and
        // ends the standby thread.
        let writer = Arc::clone(&shared);
        spawn(
            "sqlite-writer",
            Box::new(move || {
                apply(priority, "sqlite-writer");
                writer_loop(&writer, priority == WriterPriority::Adaptive);
            }),
        )?;
        Ok(this)
    }

    /// Runs `f` on a writer thread and waits for its result. A panic in
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
        self.submit(job);
        answered.await.map_err(|_| stopped())?
    }

    fn submit(&self, job: Job) {
        let mut state = self.shared.lock();
        state.queue.push_back(Queued {
            at: Instant::now(),
            job,
        });
        if state.taken_over {
            self.shared.standby.notify_one();
        } else {
            if state.writer_waits {
                self.shared.writer.notify_one();
            }
            if state.standby_parked {
                state.standby_parked = false;
                self.shared.standby.notify_one();
            }
        }
    }

    /// Installs background work: `step` is called on `sqlite-writer`
    /// whenever the queue is empty and the step it last asked for is due,
    /// and once after every job. Each call should do a bounded amount of
    /// work, since a job queued meanwhile waits for it to end. A panic in
    /// a step is logged, and the work is asked again after the next job.
    pub(super) fn set_background(&self, step: Background) {
        let mut state = self.shared.lock();
        state.background = Some(step);
        state.background_due = Some(Instant::now());
        if state.writer_waits {
            self.shared.writer.notify_one();
        }
    }

    /// Takeovers so far, and whether the queue is taken over now.
    pub(super) fn stats(&self) -> WriterStats {
        let state = self.shared.lock();
        WriterStats {
            takeovers: state.takeovers,
            taken_over: state.taken_over,
            staged_rows: 0,
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.writer.notify_all();
        self.shared.standby.notify_all();
    }
}

fn stopped() -> StoreError {
    StoreError::Database("the store's writer thread has stopped".into())
}

/// Waits on `wake` (one of the queue's condition variables).
fn wait<'a>(wake: &Condvar, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    wake.wait(state).unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `wake` for at most `limit`.
fn wait_at_most<'a>(
    wake: &Condvar,
    state: MutexGuard<'a, State>,
    limit: Duration,
) -> MutexGuard<'a, State> {
    match wake.wait_timeout(state, limit) {
        Ok((state, _)) => state,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// `sqlite-writer`: runs the queue unless it is taken over; then, if
/// `adaptive`, probes every few bounds whether it is scheduled on time
/// and takes the queue back when it is.
fn writer_loop(shared: &Shared, adaptive: bool) {
    let (probe_every, on_time) = shared.probe();
    let mut state = shared.lock();
    loop {
        if !state.taken_over
            && !state.busy
            && let Some(next) = state.queue.pop_front()
        {
            state = shared.run(state, next.job);
            continue;
        }
        if state.closed && state.queue.is_empty() {
            return;
        }
        let now = Instant::now();
        if !state.taken_over
            && !state.busy
            && state.background_due.is_some_and(|due| due <= now)
            && let Some(step) = state.background.take()
        {
            state = run_background(shared, state, step);
            continue;
        }
        if !(adaptive && state.taken_over) {
            state.writer_waits = true;
            state = match state.background_due.filter(|_| !state.taken_over) {
                Some(due) => {
                    wait_at_most(&shared.writer, state, due.saturating_duration_since(now))
                }
                None => wait(&shared.writer, state),
            };
            state.writer_waits = false;
            continue;
        }
        let due = Instant::now() + probe_every;
        state.writer_waits = true;
        state = wait_at_most(&shared.writer, state, probe_every);
        state.writer_waits = false;
        let late = Instant::now().checked_duration_since(due);
        if state.taken_over && late.is_some_and(|late| late <= on_time) {
            state.taken_over = false;
            tracing::debug!("the idle store writer has the queue back");
            shared.standby.notify_one();
        }
    }
}

/// Runs one step of background work outside the lock, marking the queue
/// busy meanwhile, and records when the next is due.
fn run_background<'a>(
    shared: &'a Shared,
    mut state: MutexGuard<'a, State>,
    mut step: Background,
) -> MutexGuard<'a, State> {
    state.busy = true;
    drop(state);
    let next = catch_unwind(AssertUnwindSafe(&mut step)).unwrap_or_else(|_| {
        tracing::error!("the store's background work panicked; it runs again after the next write");
        Next::AfterNextJob
    });
    let mut state = shared.lock();
    state.busy = false;
    state.background = Some(step);
    let now = Instant::now();
    state.background_due = match next {
        Next::Now => Some(now),
        Next::After(wait) => Some(now + wait),
        Next::AfterNextJob => None,
    };
    // A job queued meanwhile may be waiting for this step, on either thread.
    if state.taken_over {
        shared.standby.notify_one();
    }
    state
}

/// `sqlite-standby` (adaptive only): takes the queue over when its oldest
/// job has waited longer than the bound, runs it while taken over.
fn standby_loop(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.closed && state.queue.is_empty() {
            return;
        }
        if state.taken_over {
            if !state.busy
                && let Some(next) = state.queue.pop_front()
            {
                state = shared.run(state, next.job);
                continue;
            }
            state = wait(&shared.standby, state);
            continue;
        }
        let Some(waited) = state.queue.front().map(|q| q.at.elapsed()) else {
            state.standby_parked = true;
            state = wait(&shared.standby, state);
            state.standby_parked = false;
            continue;
        };
        if waited >= shared.takeover_after {
            state.taken_over = true;
            state.takeovers += 1;
            tracing::debug!(
                waited_ms = waited.as_millis() as u64,
                "a store write waited past the takeover bound; the standby writer takes the queue over"
            );
            // The idle writer has been woken for the waiting job already;
            // one more wake-up makes sure it starts probing once it runs.
            shared.writer.notify_one();
            continue;
        }
        state = wait_at_most(&shared.standby, state, shared.takeover_after - waited);
    }
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
    use rampart_test_support::wait_limit;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A takeover bound short enough for tests.
    const BOUND: Duration = Duration::from_millis(20);

    /// Polls `done` every few milliseconds until it holds or the project's
    /// test wait limit (`RAMPART_TEST_WAIT_SECS`) ran out; whether it held.
    async fn eventually(mut done: impl FnMut() -> bool) -> bool {
        let give_up = Instant::now() + wait_limit();
        while Instant::now() < give_up {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done()
    }

    /// The name and policy of the thread a job ran on.
    fn whereabouts() -> Result<(String, u32)> {
        let name = std::thread::current().name().unwrap_or("").to_owned();
        Ok((name, own_policy()?))
    }

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
        let normal = WriterThread::start(WriterPriority::Normal, BOUND).expect("start");
        let idle = WriterThread::start(WriterPriority::Idle, BOUND).expect("start");
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
        let writer = WriterThread::start(WriterPriority::Normal, BOUND).expect("start");
        let failed = writer
            .run(|| -> Result<()> { panic!("boom") })
            .await
            .expect_err("a panic is an error");
        assert!(failed.to_string().contains("boom"), "{failed}");
        assert_eq!(writer.run(|| Ok(7)).await.expect("next job runs"), 7);
    }

    #[tokio::test]
    async fn adaptive_runs_jobs_on_the_idle_writer_while_it_keeps_up() {
        let adaptive = WriterThread::start(WriterPriority::Adaptive, wait_limit()).expect("start");
        for _ in 0..3 {
            let (name, policy) = adaptive.run(whereabouts).await.expect("run");
            assert_eq!((name.as_str(), policy), ("sqlite-writer", 5));
        }
        assert_eq!(adaptive.stats(), WriterStats::default());
    }

    #[tokio::test]
    async fn a_job_left_waiting_past_the_bound_is_taken_over_in_order_and_handed_back() {
        let here = own_policy().expect("policy");
        // A longer bound than the other tests': the three queued jobs must
        // all be run by the standby before the idle writer's first probe
        // (four bounds after its blocked job ends), even on a busy machine.
        let bound = BOUND * 5;
        let writer = Arc::new(WriterThread::start(WriterPriority::Adaptive, bound).expect("start"));
        // A job in progress on the idle writer that does not end until the
        // test says so: what a starved transaction looks like to the queue.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let blocker = tokio::spawn({
            let writer = Arc::clone(&writer);
            async move {
                writer
                    .run(move || {
                        let _ = started.send(());
                        let _ = held.recv();
                        whereabouts()
                    })
                    .await
            }
        });
        running.await.expect("the first job started");
        // Three jobs queued behind it, each noting where and in which
        // order it ran.
        let order = Arc::new(Mutex::new(Vec::new()));
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let writer = Arc::clone(&writer);
                let order = Arc::clone(&order);
                tokio::spawn(async move {
                    writer
                        .run(move || {
                            order.lock().expect("order").push(i);
                            whereabouts()
                        })
                        .await
                })
            })
            .collect();
        assert!(
            eventually(|| writer.stats().taken_over).await,
            "the standby thread took the queue over"
        );
        // Nothing overtakes the job in progress.
        assert!(order.lock().expect("order").is_empty());
        release.send(()).expect("release the first job");
        let (name, policy) = blocker.await.expect("join").expect("first job");
        assert_eq!((name.as_str(), policy), ("sqlite-writer", 5));
        for job in queued {
            let (name, policy) = job.await.expect("join").expect("queued job");
            assert_eq!((name.as_str(), policy), ("sqlite-standby", here));
        }
        assert_eq!(*order.lock().expect("order"), vec![0, 1, 2]);
        assert_eq!(writer.stats().takeovers, 1);
        // The idle writer, scheduled on time again, takes the queue back
        // and runs the next job. (On a loaded machine it may be slow to
        // pick that job up, and the standby rightly steps in again: then
        // the next hand-back is awaited.)
        let give_up = Instant::now() + wait_limit();
        let mut ran_on = Vec::new();
        loop {
            assert!(
                eventually(|| !writer.stats().taken_over).await,
                "the idle writer took the queue back"
            );
            let (name, policy) = writer.run(whereabouts).await.expect("run");
            if name == "sqlite-writer" {
                assert_eq!(policy, 5);
                break;
            }
            ran_on.push(name);
            assert!(
                Instant::now() < give_up,
                "no job ran on the idle writer again: {ran_on:?}"
            );
        }
    }

    /// Busy threads at the process's policy on every CPU: where the kernel
    /// starves the `SCHED_IDLE` writer, the standby thread steps in; either
    /// way the writes go on, in order.
    #[tokio::test]
    async fn writes_go_on_while_busy_threads_hold_every_cpu() {
        let stop = Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let give_up = Instant::now() + wait_limit();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hogs: Vec<_> = (0..2 * cpus)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let busy = Arc::clone(&busy);
                std::thread::spawn(move || {
                    // Counted as busy once it has spun for a while, so that
                    // the scheduler treats it as the CPU-bound thread it is.
                    let began = Instant::now();
                    let mut counted = false;
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                        if !counted && began.elapsed() > Duration::from_millis(100) {
                            counted = true;
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        let writer = WriterThread::start(WriterPriority::Adaptive, BOUND).expect("start");
        let all_busy = eventually(|| busy.load(Ordering::Relaxed) == hogs.len()).await;
        // One write at a time, so that each needs the writer woken afresh.
        let deadline = Instant::now() + wait_limit();
        let mut ran_on = Vec::new();
        while ran_on.len() < 50 && Instant::now() < deadline {
            let seq = ran_on.len();
            let (name, _) = writer
                .run(move || Ok((whereabouts()?.0, seq)))
                .await
                .map(|(name, ran)| {
                    assert_eq!(ran, seq, "writes run in order");
                    (name, ran)
                })
                .expect("write");
            ran_on.push(name);
        }
        stop.store(true, Ordering::Relaxed);
        for hog in hogs {
            hog.join().expect("hog");
        }
        assert!(all_busy, "the busy threads started");
        assert_eq!(
            ran_on.len(),
            50,
            "every write ended while the CPUs were busy"
        );
        assert!(
            ran_on
                .iter()
                .all(|name| name == "sqlite-writer" || name == "sqlite-standby"),
            "{ran_on:?}"
        );
    }

    /// A writer whose background work is `step`, called with the number of
    /// steps before it; the count of steps taken.
    fn counting_steps(
        step: impl Fn(usize) -> Next + Send + 'static,
    ) -> (WriterThread, Arc<AtomicUsize>) {
        let writer = WriterThread::start(WriterPriority::Normal, BOUND).expect("start");
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&steps);
        writer.set_background(Box::new(move || {
            step(counted.fetch_add(1, Ordering::SeqCst))
        }));
        (writer, steps)
    }

    /// Background work that always has more to do runs while the queue is
    /// empty, and every job queued meanwhile still runs, after at most the
    /// step in progress. A step that panics does not stop the thread.
    #[tokio::test]
    async fn background_work_fills_the_gaps_between_jobs() {
        let (writer, steps) = counting_steps(|n| {
            assert!(n != 3, "the fourth step panics");
            Next::Now
        });
        assert!(
            eventually(|| steps.load(Ordering::SeqCst) >= 3).await,
            "steps run without any job"
        );
        // The panic made the work wait for the next job; it resumes after it.
        for i in 0..20 {
            assert_eq!(writer.run(move || Ok(i)).await.expect("job"), i);
        }
        let after_jobs = steps.load(Ordering::SeqCst);
        assert!(
            eventually(|| steps.load(Ordering::SeqCst) > after_jobs + 10).await,
            "steps go on after the jobs"
        );
    }

    /// Work with nothing due runs once after each job, not in a loop.
    #[tokio::test]
    async fn background_work_with_nothing_due_runs_once_per_job() {
        let (writer, steps) = counting_steps(|_| Next::AfterNextJob);
        // Once when installed.
        assert!(eventually(|| steps.load(Ordering::SeqCst) == 1).await);
        for i in 0..5usize {
            writer.run(move || Ok(i)).await.expect("job");
            let expected = i + 2;
            assert!(
                eventually(|| steps.load(Ordering::SeqCst) == expected).await,
                "one step after job {i}: {}",
                steps.load(Ordering::SeqCst)
            );
        }
    }
}
