//! [`MasterState`]: the master's bookkeeping and its rules for every message, free of sockets and
//! clocks (the connection a message came over and the time are passed in), so that it is
//! unit-tested deterministically and fuzzed.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rpcenv::RpcAddress;

use super::error::ClusterError;
use super::protocol::{task_result, ClusterStatus, MasterMsg, SubmissionReport, Submitted};

/// The setting capping the tasks of one submission.
pub const MAX_TASKS_PER_SUBMIT_KEY: &str = "app.maxTasksPerSubmit";
/// Its default.
pub const DEFAULT_MAX_TASKS_PER_SUBMIT: u64 = 100_000;
/// The most cores a worker may offer.
pub const MAX_CORES: u32 = 1024;
/// The most workers a master accepts.
pub const MAX_WORKERS: usize = 4096;
/// The longest worker id, in bytes.
pub const MAX_ID_LEN: usize = 128;
/// How many lost workers and re-queued tasks the status lists (beyond that it only counts).
const HISTORY: usize = 1000;

/// The master's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A worker without a heartbeat for this long is lost.
    pub worker_timeout: Duration,
    /// The most tasks one submission may ask for.
    pub max_tasks_per_submit: u64,
}

/// How a message reached the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// An ask, over the connection whose peer has this socket address (`None`: from this
    /// process). A registration is bound to it: only its closing loses the worker.
    Ask(Option<RpcAddress>),
    /// A one-way message.
    Send,
}

/// The master's answer to a message (for an ask, what the asker gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A registration was accepted under this number.
    Registered {
        /// The registration number.
        registration: u64,
    },
    /// A submission was queued.
    Submitted(Submitted),
    /// How a submission is doing.
    Submission(SubmissionReport),
    /// The cluster's status.
    Status(ClusterStatus),
    /// This many workers were told to shut down.
    Decommissioned(u64),
    /// A one-way message was handled.
    Done,
}

/// What the master tells a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run a task.
    Launch {
        /// The registration the task is launched under.
        registration: u64,
        /// The task.
        task: u64,
    },
    /// Register again: this registration is unknown here.
    ReconnectWorker {
        /// The registration the worker's heartbeat named.
        registration: u64,
    },
    /// Shut down.
    Shutdown {
        /// The registration being shut down.
        registration: u64,
    },
}

/// How a task launch failed (see [`MasterState::launch_failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchFailure {
    /// It was not delivered, or the worker refused it.
    NotAccepted,
    /// No answer came in time: whether the worker got it is unknown.
    Unanswered,
}

/// What handling one message or event produced.
#[derive(Debug)]
pub struct Outcome<W> {
    /// The answer (for a one-way message, an error is only logged).
    pub answer: Result<Answer, ClusterError>,
    /// Messages to workers, in order.
    pub commands: Vec<(W, Command)>,
    /// Workers lost, with how it was detected.
    pub lost: Vec<(String, &'static str)>,
    /// Workers gone after the cluster was decommissioned (not losses).
    pub left: Vec<String>,
}

impl<W> Outcome<W> {
    fn answer(answer: Result<Answer, ClusterError>) -> Self {
        Outcome {
            answer,
            commands: Vec::new(),
            lost: Vec::new(),
            left: Vec::new(),
        }
    }
}

struct WorkerInfo<W> {
    worker: W,
    cores: u32,
    /// The connection it registered over.
    connection: Option<RpcAddress>,
    registration: u64,
    last_heartbeat: Instant,
    /// It heartbeated under this registration, so it knows the number its tasks carry.
    ready: bool,
    running: Vec<u64>,
}

struct Submission {
    first: u64,
    report: SubmissionReport,
}

/// The master's bookkeeping. `W` is the handle of a worker (a ref to its endpoint in the real
/// master).
///
/// A worker is its registration: an id, the connection it registered over and a registration
/// number drawn at random. A registration for a registered id is accepted only over the same
/// connection (it replaces the earlier one, whose tasks are re-queued); only that connection's
/// closing, a heartbeat timeout or a new registration ends it; results and heartbeats must name
/// the current registration number, so nothing of an earlier registration (or of an earlier
/// master) is counted. A worker gets tasks once it has heartbeated under its registration: then
/// it knows the number they carry.
pub struct MasterState<W> {
    limits: Limits,
    registrations: StdRng,
    workers: BTreeMap<String, WorkerInfo<W>>,
    /// Queued tasks as ranges: a submission costs one entry however many tasks it has.
    queue: VecDeque<Range<u64>>,
    queued: u64,
    done: HashSet<u64>,
    submissions: Vec<Submission>,
    decommissioned: bool,
    status: ClusterStatus,
}

impl<W> std::fmt::Debug for MasterState<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterState")
            .field("limits", &self.limits)
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .field("queued", &self.queued)
            .field("done", &self.done.len())
            .field("submissions", &self.submissions.len())
            .field("decommissioned", &self.decommissioned)
            .finish_non_exhaustive()
    }
}

impl<W: Clone> MasterState<W> {
    /// An empty cluster; registration numbers are drawn from a generator seeded with `seed`.
    pub fn new(limits: Limits, seed: [u8; 32]) -> Self {
        MasterState {
            limits,
            registrations: StdRng::from_seed(seed),
            workers: BTreeMap::new(),
            queue: VecDeque::new(),
            queued: 0,
            done: HashSet::new(),
            submissions: Vec::new(),
            decommissioned: false,
            status: ClusterStatus::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Handles one message that came `via` an ask or a send, at `now`.
    pub fn handle(&mut self, msg: MasterMsg<W>, via: Via, now: Instant) -> Outcome<W> {
        let name = message_name(&msg);
        let asked = match via {
            Via::Ask(connection) => Some(connection),
            Via::Send => None,
        };
        match (msg, asked) {
            (MasterMsg::RegisterWorker { id, cores, worker }, Some(connection)) => Outcome::answer(
                self.register(id, cores, worker, connection, now)
                    .map(|registration| Answer::Registered { registration }),
            ),
            (
                MasterMsg::Heartbeat {
                    id,
                    registration,
                    worker,
                },
                None,
            ) => {
                let mut out = Outcome::answer(self.heartbeat(&id, registration, now));
                if out.answer.is_err() && !self.decommissioned {
                    out.commands
                        .push((worker, Command::ReconnectWorker { registration }));
                }
                self.schedule(&mut out);
                out
            }
            (
                MasterMsg::TaskFinished {
                    worker,
                    registration,
                    task,
                    result,
                },
                None,
            ) => {
                let mut out = Outcome::answer(self.finished(&worker, registration, task, result));
                self.schedule(&mut out);
                out
            }
            (MasterMsg::SubmitTasks { count }, Some(_)) => {
                let mut out = Outcome::answer(self.submit(count).map(Answer::Submitted));
                self.schedule(&mut out);
                out
            }
            (MasterMsg::SubmissionStatus { first }, Some(_)) => {
                Outcome::answer(self.submission(first).map(Answer::Submission))
            }
            (MasterMsg::Status, Some(_)) => Outcome::answer(Ok(Answer::Status(self.status()))),
            (MasterMsg::CheckWorkers, None) => self.check_workers(now),
            (MasterMsg::Decommission, Some(_)) => {
                self.decommissioned = true;
                let commands: Vec<(W, Command)> = self
                    .workers
                    .values()
                    .map(|w| {
                        let registration = w.registration;
                        (w.worker.clone(), Command::Shutdown { registration })
                    })
                    .collect();
                let mut out = Outcome::answer(Ok(Answer::Decommissioned(commands.len() as u64)));
                out.commands = commands;
                out
            }
            (_, Some(_)) => Outcome::answer(Err(ClusterError::OneWay { message: name })),
            (_, None) => Outcome::answer(Err(ClusterError::MustBeAsked { message: name })),
        }
    }

    /// A connection closed: the worker registered over it (if any) is lost.
    pub fn disconnected(&mut self, connection: &RpcAddress) -> Outcome<W> {
        let mut out = Outcome::answer(Ok(Answer::Done));
        let id = self
            .workers
            .iter()
            .find(|(_, w)| w.connection.as_ref() == Some(connection))
            .map(|(id, _)| id.clone());
        if let Some(id) = id {
            self.lose(&id, "on_disconnected", &mut out);
            self.schedule(&mut out);
        }
        out
    }

    /// The launch of `task` under `registration` failed. A launch that was not delivered or
    /// was refused ([`LaunchFailure::NotAccepted`]: the worker's advertised address cannot be
    /// reached, or it does not hold that registration) shows a worker the master cannot launch
    /// tasks on: its registration ends as a loss and its running tasks are re-queued (if it
    /// still heartbeats, it is asked to register again). A launch that went unanswered
    /// ([`LaunchFailure::Unanswered`]) may have arrived at a worker that is merely slow, or
    /// been lost on the way: only that task is re-queued (a result of the first launch that
    /// comes later is not counted twice), and the worker's heartbeats decide whether it is
    /// lost. Nothing happens when the registration has already ended or the task is no longer
    /// running there (it finished: the launch did arrive).
    pub fn launch_failed(
        &mut self,
        registration: u64,
        task: u64,
        failure: LaunchFailure,
    ) -> Outcome<W> {
        let mut out = Outcome::answer(Ok(Answer::Done));
        let Some((id, w)) = self
            .workers
            .iter_mut()
            .find(|(_, w)| w.registration == registration && w.running.contains(&task))
        else {
            return out;
        };
        match failure {
            LaunchFailure::NotAccepted => {
                let id = id.clone();
                self.lose(&id, "a task launch was not accepted", &mut out);
            }
            LaunchFailure::Unanswered => {
                w.running.retain(|t| *t != task);
                self.requeue(vec![task]);
            }
        }
        self.schedule(&mut out);
        out
    }

    /// The current status.
    pub fn status(&self) -> ClusterStatus {
        let mut s = self.status.clone();
        s.workers_alive = self.workers.len();
        s.queued = self.queued;
        s.running = self.workers.values().map(|w| w.running.len()).sum();
        s.done = self.done.len();
        s
    }

    fn register(
        &mut self,
        id: String,
        cores: u32,
        worker: W,
        connection: Option<RpcAddress>,
        now: Instant,
    ) -> Result<u64, ClusterError> {
        check_id(&id)?;
        if cores == 0 || cores > MAX_CORES {
            return Err(ClusterError::BadCores {
                id,
                cores,
                max: MAX_CORES,
            });
        }
        if self.decommissioned {
            return Err(ClusterError::Decommissioned);
        }
        match self.workers.get(&id) {
            Some(existing) if existing.connection != connection => {
                return Err(ClusterError::DuplicateWorker { id });
            }
            // The same connection: a new incarnation of the worker; the old one's tasks go back.
            Some(_) => {
                if let Some(old) = self.workers.remove(&id) {
                    self.requeue(old.running);
                }
            }
            None if self.workers.len() >= MAX_WORKERS => {
                return Err(ClusterError::TooManyWorkers { max: MAX_WORKERS });
            }
            None => {}
        }
        let registration = self.registrations.random::<u64>();
        self.workers.insert(
            id,
            WorkerInfo {
                worker,
                cores,
                connection,
                registration,
                last_heartbeat: now,
                ready: false,
                running: Vec::new(),
            },
        );
        Ok(registration)
    }

    fn heartbeat(
        &mut self,
        id: &str,
        registration: u64,
        now: Instant,
    ) -> Result<Answer, ClusterError> {
        self.status.heartbeats += 1;
        let w = self.current(id, registration)?;
        w.last_heartbeat = now;
        w.ready = true;
        Ok(Answer::Done)
    }

    /// The worker `id` if `registration` is its current one.
    fn current(&mut self, id: &str, registration: u64) -> Result<&mut WorkerInfo<W>, ClusterError> {
        match self.workers.get_mut(id) {
            Some(w) if w.registration == registration => Ok(w),
            Some(_) => Err(ClusterError::StaleRegistration {
                id: cut(id),
                registration,
            }),
            None => Err(ClusterError::UnknownWorker { id: cut(id) }),
        }
    }

    fn submit(&mut self, count: u64) -> Result<Submitted, ClusterError> {
        if count == 0 {
            return Err(ClusterError::NoTasks);
        }
        if count > self.limits.max_tasks_per_submit {
            return Err(ClusterError::TooManyTasks {
                count,
                max: self.limits.max_tasks_per_submit,
            });
        }
        let first = self.status.total;
        let end = first
            .checked_add(count)
            .ok_or(ClusterError::TaskCounterOverflow {
                count,
                total: first,
            })?;
        self.queue.push_back(first..end);
        self.queued += count;
        self.status.total = end;
        self.submissions.push(Submission {
            first,
            report: SubmissionReport {
                count,
                ..SubmissionReport::default()
            },
        });
        Ok(Submitted { first, count })
    }

    fn submission(&self, first: u64) -> Result<SubmissionReport, ClusterError> {
        self.submissions
            .binary_search_by_key(&first, |s| s.first)
            .map(|i| self.submissions[i].report)
            .map_err(|_| ClusterError::UnknownSubmission { first })
    }

    fn finished(
        &mut self,
        id: &str,
        registration: u64,
        task: u64,
        result: u64,
    ) -> Result<Answer, ClusterError> {
        let w = match self.current(id, registration) {
            Ok(w) => w,
            Err(e) => {
                // An earlier registration's task was re-queued when it ended: not counted.
                self.status.late_results += 1;
                return Err(e);
            }
        };
        let Some(at) = w.running.iter().position(|t| *t == task) else {
            self.status.late_results += 1;
            return Err(ClusterError::TaskNotRunning { id: cut(id), task });
        };
        w.running.swap_remove(at);
        // A launched task belongs to a submission (tasks are numbered consecutively).
        let i = self.submissions.partition_point(|s| s.first <= task);
        let report = &mut self.submissions[i - 1].report;
        if !self.done.insert(task) {
            self.status.duplicates += 1;
            report.duplicates += 1;
            return Ok(Answer::Done);
        }
        if result != task_result(task) {
            self.status.wrong_results += 1;
            report.wrong_results += 1;
        }
        report.completed += 1;
        *self.status.per_worker.entry(id.to_string()).or_default() += 1;
        Ok(Answer::Done)
    }

    fn check_workers(&mut self, now: Instant) -> Outcome<W> {
        let mut out = Outcome::answer(Ok(Answer::Done));
        let expired: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                now.saturating_duration_since(w.last_heartbeat) > self.limits.worker_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.lose(&id, "heartbeat expired", &mut out);
        }
        self.schedule(&mut out);
        out
    }

    /// Ends a registration: its running tasks go back to the front of the queue.
    fn lose(&mut self, id: &str, how: &'static str, out: &mut Outcome<W>) {
        let Some(info) = self.workers.remove(id) else {
            return;
        };
        self.requeue(info.running);
        if self.decommissioned {
            out.left.push(id.to_string());
            return;
        }
        self.status.lost_count += 1;
        if self.status.lost.len() < HISTORY {
            self.status.lost.push((id.to_string(), how.to_string()));
        }
        out.lost.push((id.to_string(), how));
    }

    fn requeue(&mut self, running: Vec<u64>) {
        for &task in running.iter().rev() {
            self.queue.push_front(task..task + 1);
        }
        self.queued += running.len() as u64;
        self.status.requeued_count += running.len() as u64;
        let room = HISTORY.saturating_sub(self.status.requeued.len());
        self.status.requeued.extend(running.into_iter().take(room));
    }

    /// Hands queued tasks to workers with free cores.
    fn schedule(&mut self, out: &mut Outcome<W>) {
        if self.decommissioned {
            return;
        }
        for info in self.workers.values_mut().filter(|w| w.ready) {
            while info.running.len() < info.cores as usize {
                let Some(range) = self.queue.front_mut() else {
                    return;
                };
                let task = range.start;
                range.start += 1;
                if range.is_empty() {
                    self.queue.pop_front();
                }
                self.queued -= 1;
                info.running.push(task);
                out.commands.push((
                    info.worker.clone(),
                    Command::Launch {
                        registration: info.registration,
                        task,
                    },
                ));
            }
        }
    }
}

/// The message's name, for errors.
pub fn message_name<W>(msg: &MasterMsg<W>) -> &'static str {
    match msg {
        MasterMsg::RegisterWorker { .. } => "RegisterWorker",
        MasterMsg::Heartbeat { .. } => "Heartbeat",
        MasterMsg::TaskFinished { .. } => "TaskFinished",
        MasterMsg::SubmitTasks { .. } => "SubmitTasks",
        MasterMsg::SubmissionStatus { .. } => "SubmissionStatus",
        MasterMsg::Status => "Status",
        MasterMsg::CheckWorkers => "CheckWorkers",
        MasterMsg::Decommission => "Decommission",
    }
}

fn check_id(id: &str) -> Result<(), ClusterError> {
    let reason = if id.is_empty() {
        "empty"
    } else if id.len() > MAX_ID_LEN {
        "longer than 128 bytes"
    } else if id.chars().any(char::is_control) {
        "has control characters"
    } else {
        return Ok(());
    };
    Err(ClusterError::BadWorkerId {
        id: cut(id),
        reason,
    })
}

/// An id as errors quote it: at most its first 64 characters.
fn cut(id: &str) -> String {
    id.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        worker_timeout: Duration::from_secs(2),
        max_tasks_per_submit: DEFAULT_MAX_TASKS_PER_SUBMIT,
    };

    fn conn(port: u16) -> Via {
        Via::Ask(Some(RpcAddress::new("127.0.0.1", port)))
    }

    fn register(
        s: &mut MasterState<u32>,
        id: &str,
        cores: u32,
        handle: u32,
        via: Via,
        now: Instant,
    ) -> u64 {
        let out = s.handle(
            MasterMsg::RegisterWorker {
                id: id.into(),
                cores,
                worker: handle,
            },
            via,
            now,
        );
        match out.answer {
            Ok(Answer::Registered { registration }) => registration,
            other => panic!("registration of {id}: {other:?}"),
        }
    }

    fn heartbeat(
        s: &mut MasterState<u32>,
        id: &str,
        registration: u64,
        handle: u32,
        now: Instant,
    ) -> Outcome<u32> {
        s.handle(
            MasterMsg::Heartbeat {
                id: id.into(),
                registration,
                worker: handle,
            },
            Via::Send,
            now,
        )
    }

    fn finish(s: &mut MasterState<u32>, id: &str, registration: u64, task: u64) -> Outcome<u32> {
        s.handle(
            MasterMsg::TaskFinished {
                worker: id.into(),
                registration,
                task,
                result: task_result(task),
            },
            Via::Send,
            Instant::now(),
        )
    }

    fn submit(s: &mut MasterState<u32>, count: u64) -> Outcome<u32> {
        s.handle(
            MasterMsg::SubmitTasks { count },
            Via::Ask(None),
            Instant::now(),
        )
    }

    fn launched(out: &Outcome<u32>) -> Vec<u64> {
        out.commands
            .iter()
            .filter_map(|(_, c)| match c {
                Command::Launch { task, .. } => Some(*task),
                _ => None,
            })
            .collect()
    }

    /// A launch that was not accepted ends its worker's registration: the task and the
    /// worker's other running tasks go to a worker that takes them. A failure reported for a
    /// registration that has ended, or for a task that finished, changes nothing.
    #[test]
    fn a_launch_not_accepted_loses_its_worker_and_its_tasks_run_elsewhere() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [3; 32]);
        let far = register(&mut s, "far", 2, 1, conn(4000), now);
        heartbeat(&mut s, "far", far, 1, now);
        assert_eq!(launched(&submit(&mut s, 4)), vec![0, 1]);
        let near = register(&mut s, "near", 2, 2, conn(4001), now);
        assert_eq!(
            launched(&heartbeat(&mut s, "near", near, 2, now)),
            vec![2, 3]
        );
        assert_eq!(
            launched(&finish(&mut s, "near", near, 2)),
            Vec::<u64>::new()
        );

        // A finished task's late failure, and an unknown registration's: nothing happens.
        let out = s.launch_failed(near, 2, LaunchFailure::NotAccepted);
        assert!(out.lost.is_empty() && out.commands.is_empty());
        assert!(s
            .launch_failed(far ^ 1, 0, LaunchFailure::NotAccepted)
            .lost
            .is_empty());
        assert_eq!(s.status().running, 3);

        let out = s.launch_failed(far, 1, LaunchFailure::NotAccepted);
        assert_eq!(
            out.lost,
            vec![("far".to_string(), "a task launch was not accepted")]
        );
        // The re-queued tasks go to the worker left as its cores free up.
        assert_eq!(launched(&out), vec![0]);
        let st = s.status();
        assert_eq!((st.workers_alive, st.running, st.queued), (1, 2, 1));
        assert_eq!(launched(&finish(&mut s, "near", near, 3)), vec![1]);
        // A second failure for the ended registration changes nothing.
        assert!(s
            .launch_failed(far, 0, LaunchFailure::NotAccepted)
            .lost
            .is_empty());
        assert_eq!(s.status().workers_alive, 1);
    }

    /// A launch that went unanswered re-queues only its task: the worker stays registered, a
    /// free core takes the task again, and a result of the first launch that comes after the
    /// second one's is not counted twice.
    #[test]
    fn an_unanswered_launch_requeues_only_its_task() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [4; 32]);
        let slow = register(&mut s, "slow", 2, 1, conn(4000), now);
        heartbeat(&mut s, "slow", slow, 1, now);
        assert_eq!(launched(&submit(&mut s, 3)), vec![0, 1]);
        let out = s.launch_failed(slow, 0, LaunchFailure::Unanswered);
        assert!(out.lost.is_empty());
        // The freed core takes the next task in line: task 0, back at the front.
        assert_eq!(launched(&out), vec![0]);
        let st = s.status();
        assert_eq!(
            (st.workers_alive, st.running, st.queued, st.requeued_count),
            (1, 2, 1, 1)
        );
        assert!(finish(&mut s, "slow", slow, 0).answer.is_ok());
        // The first launch's result, late: not counted again.
        assert!(finish(&mut s, "slow", slow, 0).answer.is_err());
        assert_eq!(s.status().done, 1);
    }

    #[test]
    fn tasks_go_to_workers_that_heartbeated_their_registration_and_complete_once() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [1; 32]);
        let reg = register(&mut s, "a", 2, 7, conn(4000), now);
        assert!(
            launched(&submit(&mut s, 5)).is_empty(),
            "not before its first heartbeat"
        );
        let out = heartbeat(&mut s, "a", reg, 7, now);
        assert_eq!(launched(&out), vec![0, 1]);
        assert!(out.commands.iter().all(|(w, c)| *w == 7
            && matches!(c, Command::Launch { registration, .. } if *registration == reg)));
        assert_eq!(launched(&finish(&mut s, "a", reg, 0)), vec![2]);
        // Again, from an older registration, and for a task not running there: not counted.
        assert!(matches!(
            finish(&mut s, "a", reg, 0).answer,
            Err(ClusterError::TaskNotRunning { task: 0, .. })
        ));
        assert!(matches!(
            finish(&mut s, "a", reg ^ 1, 1).answer,
            Err(ClusterError::StaleRegistration { .. })
        ));
        let st = s.status();
        assert_eq!(
            (
                st.done,
                st.duplicates,
                st.late_results,
                st.running,
                st.queued
            ),
            (1, 0, 2, 2, 2)
        );
    }

    #[test]
    fn hostile_submissions_are_refused_without_allocating() {
        let mut s: MasterState<u32> = MasterState::new(LIMITS, [1; 32]);
        for (count, expected) in [
            (0, ClusterError::NoTasks),
            (
                1 << 40,
                ClusterError::TooManyTasks {
                    count: 1 << 40,
                    max: 100_000,
                },
            ),
            (
                u64::MAX,
                ClusterError::TooManyTasks {
                    count: u64::MAX,
                    max: 100_000,
                },
            ),
            (
                100_001,
                ClusterError::TooManyTasks {
                    count: 100_001,
                    max: 100_000,
                },
            ),
        ] {
            assert_eq!(submit(&mut s, count).answer, Err(expected));
        }
        assert_eq!(
            submit(&mut s, 100_000).answer,
            Ok(Answer::Submitted(Submitted {
                first: 0,
                count: 100_000
            }))
        );
        // Without a cap, the counter cannot wrap: a queue of ranges holds u64::MAX tasks in one entry.
        let mut s: MasterState<u32> = MasterState::new(
            Limits {
                max_tasks_per_submit: u64::MAX,
                ..LIMITS
            },
            [1; 32],
        );
        assert!(submit(&mut s, u64::MAX - 1).answer.is_ok());
        assert_eq!(
            submit(&mut s, 2).answer,
            Err(ClusterError::TaskCounterOverflow {
                count: 2,
                total: u64::MAX - 1
            })
        );
        assert_eq!(s.queue.len(), 1);
        assert_eq!(s.status().queued, u64::MAX - 1);
    }

    #[test]
    fn a_silent_worker_expires_its_tasks_come_first_and_its_heartbeat_asks_it_to_register_again() {
        let t0 = Instant::now();
        let mut s = MasterState::new(LIMITS, [1; 32]);
        let a = register(&mut s, "a", 2, 1, conn(4000), t0);
        let b = register(&mut s, "b", 1, 2, conn(4001), t0);
        heartbeat(&mut s, "a", a, 1, t0);
        heartbeat(&mut s, "b", b, 2, t0);
        assert_eq!(launched(&submit(&mut s, 4)), vec![0, 1, 2]);
        assert!(heartbeat(&mut s, "b", b, 2, t0 + Duration::from_secs(2))
            .answer
            .is_ok());
        let quiet = s.handle(
            MasterMsg::CheckWorkers,
            Via::Send,
            t0 + Duration::from_secs(1),
        );
        assert!(quiet.lost.is_empty());
        let out = s.handle(
            MasterMsg::CheckWorkers,
            Via::Send,
            t0 + Duration::from_secs(3),
        );
        assert_eq!(out.lost, vec![("a".to_string(), "heartbeat expired")]);
        let st = s.status();
        assert_eq!(
            (st.requeued.clone(), st.lost_count, st.workers_alive),
            (vec![0, 1], 1, 1)
        );
        // The lost worker's late result is not counted; the re-run is.
        assert!(finish(&mut s, "a", a, 0).answer.is_err());
        assert_eq!(launched(&finish(&mut s, "b", b, 2)), vec![0]);
        assert!(finish(&mut s, "b", b, 0).answer.is_ok());
        // Its next heartbeat is answered with ReconnectWorker naming the refused registration.
        let out = heartbeat(&mut s, "a", a, 1, t0 + Duration::from_secs(4));
        assert_eq!(
            out.answer,
            Err(ClusterError::UnknownWorker { id: "a".into() })
        );
        assert_eq!(
            out.commands,
            vec![(1, Command::ReconnectWorker { registration: a })]
        );
        let st = s.status();
        assert_eq!((st.done, st.late_results, st.duplicates), (2, 1, 0));
    }

    #[test]
    fn a_worker_is_its_registration_connection_and_number() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [1; 32]);
        let first = register(&mut s, "a", 1, 1, conn(4000), now);
        heartbeat(&mut s, "a", first, 1, now);
        assert_eq!(launched(&submit(&mut s, 3)), vec![0]);
        // Another connection cannot take the id over, nor can its closing (or the closing of any
        // connection but the registration's) end the registration.
        let out = s.handle(
            MasterMsg::RegisterWorker {
                id: "a".into(),
                cores: 1,
                worker: 9,
            },
            conn(5000),
            now,
        );
        assert_eq!(
            out.answer,
            Err(ClusterError::DuplicateWorker { id: "a".into() })
        );
        assert!(s
            .disconnected(&RpcAddress::new("127.0.0.1", 5000))
            .lost
            .is_empty());
        assert!(s
            .disconnected(&RpcAddress::new("localhost", 4000))
            .lost
            .is_empty());
        assert_eq!(s.status().workers_alive, 1);
        // Over the same connection, a new incarnation: new number, the old one's task re-queued and
        // its result not counted.
        let second = register(&mut s, "a", 1, 1, conn(4000), now);
        assert_ne!(first, second);
        assert_eq!(s.status().requeued, vec![0]);
        assert!(finish(&mut s, "a", first, 0).answer.is_err());
        assert_eq!(launched(&heartbeat(&mut s, "a", second, 1, now)), vec![0]);
        assert!(finish(&mut s, "a", second, 0).answer.is_ok());
        let st = s.status();
        assert_eq!((st.done, st.duplicates, st.lost_count), (1, 0, 0));
        // The registration's own connection closing loses it.
        let out = s.disconnected(&RpcAddress::new("127.0.0.1", 4000));
        assert_eq!(out.lost, vec![("a".to_string(), "on_disconnected")]);
    }

    #[test]
    fn bad_registrations_and_wrong_kinds_of_message_get_typed_errors() {
        let now = Instant::now();
        let mut s: MasterState<u32> = MasterState::new(LIMITS, [1; 32]);
        let bad = |s: &mut MasterState<u32>, id: &str, cores| {
            s.handle(
                MasterMsg::RegisterWorker {
                    id: id.into(),
                    cores,
                    worker: 0,
                },
                Via::Ask(None),
                now,
            )
            .answer
        };
        assert!(matches!(
            bad(&mut s, "", 1),
            Err(ClusterError::BadWorkerId { .. })
        ));
        assert!(matches!(
            bad(&mut s, &"x".repeat(129), 1),
            Err(ClusterError::BadWorkerId { .. })
        ));
        assert!(matches!(
            bad(&mut s, "a\nb", 1),
            Err(ClusterError::BadWorkerId { .. })
        ));
        assert!(matches!(
            bad(&mut s, "a", 0),
            Err(ClusterError::BadCores { .. })
        ));
        assert!(matches!(
            bad(&mut s, "a", u32::MAX),
            Err(ClusterError::BadCores { .. })
        ));
        assert_eq!(
            s.handle(MasterMsg::Status, Via::Send, now).answer,
            Err(ClusterError::MustBeAsked { message: "Status" })
        );
        assert_eq!(
            s.handle(MasterMsg::CheckWorkers, Via::Ask(None), now)
                .answer,
            Err(ClusterError::OneWay {
                message: "CheckWorkers"
            })
        );
        assert_eq!(
            s.handle(
                MasterMsg::SubmissionStatus { first: 3 },
                Via::Ask(None),
                now
            )
            .answer,
            Err(ClusterError::UnknownSubmission { first: 3 })
        );
        assert_eq!(s.status().workers_alive, 0);
    }

    #[test]
    fn a_submission_reports_its_own_tasks() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [1; 32]);
        let reg = register(&mut s, "a", 4, 1, Via::Ask(None), now);
        heartbeat(&mut s, "a", reg, 1, now);
        submit(&mut s, 2);
        submit(&mut s, 2);
        for task in 0..3 {
            finish(&mut s, "a", reg, task);
        }
        let report = |s: &mut MasterState<u32>, first| match s
            .handle(MasterMsg::SubmissionStatus { first }, Via::Ask(None), now)
            .answer
        {
            Ok(Answer::Submission(r)) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(report(&mut s, 0).completed, 2);
        assert_eq!(report(&mut s, 2).completed, 1);
        assert_eq!(report(&mut s, 2).count, 2);
    }

    #[test]
    fn decommissioning_tells_every_worker_and_later_departures_are_not_losses() {
        let now = Instant::now();
        let mut s = MasterState::new(LIMITS, [1; 32]);
        let a = register(&mut s, "a", 1, 1, conn(4000), now);
        let out = s.handle(MasterMsg::Decommission, Via::Ask(None), now);
        assert_eq!(out.answer, Ok(Answer::Decommissioned(1)));
        assert_eq!(
            out.commands,
            vec![(1, Command::Shutdown { registration: a })]
        );
        let out = s.disconnected(&RpcAddress::new("127.0.0.1", 4000));
        assert!(out.lost.is_empty());
        assert_eq!(out.left, vec!["a".to_string()]);
        assert_eq!(s.status().lost_count, 0);
        // No ReconnectWorker, no new registration.
        assert!(heartbeat(&mut s, "a", a, 1, now).commands.is_empty());
        let out = s.handle(
            MasterMsg::RegisterWorker {
                id: "b".into(),
                cores: 1,
                worker: 2,
            },
            Via::Ask(None),
            now,
        );
        assert_eq!(out.answer, Err(ClusterError::Decommissioned));
    }
}
