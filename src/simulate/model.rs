//! The model: a queue worked by pods, KEDA's activation loop and the HPA, on a virtual clock
//! of whole seconds.
//!
//! Each second `t`, in this order:
//! 1. KEDA polls every `pollingInterval`: scale 0 -> 1 when a trigger is active, 1 -> 0 after
//!    `cooldownPeriod` without one;
//! 2. the HPA syncs every `--hpa-sync-period` when the target has replicas;
//! 3. blend-scaler's background refresh reads the queue and the query when the server's
//!    schedule says, for the calls of steps 1 and 2 (which it follows), in the rest of the
//!    second (and, for `external-push`, the open `StreamIsActive` pushes a change of activity
//!    to KEDA);
//! 4. the second's arrivals join the queue ([`Queue`]) and ready pods work it, oldest message
//!    first.
//!
//! KEDA's poll and the HPA each tick at their own [`Phase`] within their period.
//!
//! Everything here is pure: [`simulate`] takes a trace, a plan and settings and returns the
//! per-second series of both configurations.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::blend::{self, Inputs};
use crate::cron::CronPlan;
use crate::metadata::Plan;

use super::cache::Cached;
#[cfg(test)]
use super::cache::Log;
use super::hpa::{Controller, Hpa, Metric};
use super::queue::Queue;
use super::trace::Trace;

/// KEDA's ScaledObject settings (`spec.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct Keda {
    pub polling_interval: u64,
    pub cooldown_period: u64,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl Default for Keda {
    fn default() -> Self {
        Self {
            polling_interval: 30,
            cooldown_period: 300,
            min_replicas: 0,
            max_replicas: 100,
        }
    }
}

/// The deployment being scaled.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Messages one ready pod completes per second while it has work.
    pub messages_per_second_per_replica: f64,
    /// Seconds from a pod's creation until it takes work.
    pub pod_start_seconds: u64,
}

/// How blend-scaler is deployed.
#[derive(Clone, Debug, PartialEq)]
pub struct BlendSettings {
    /// `--refresh-interval`, in seconds.
    pub refresh_interval: u64,
    /// The trigger is `external-push`: the stream keeps the cache at a 1 s refresh and pushes
    /// activity changes to KEDA at once.
    pub push: bool,
}

impl Default for BlendSettings {
    fn default() -> Self {
        Self {
            refresh_interval: 5,
            push: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub keda: Keda,
    pub hpa: Hpa,
    pub workload: Workload,
    pub blend: BlendSettings,
}

/// What one configuration did, second by second.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// Pods that exist (the deployment's replicas) during each second.
    pub replicas: Vec<u32>,
    /// Pods that take work during each second.
    pub ready: Vec<u32>,
    /// Messages waiting at the start of each second.
    pub backlog: Vec<u64>,
    /// Seconds the oldest waiting message has waited, at the start of each second.
    pub oldest_age: Vec<u64>,
    /// How many messages waited each number of seconds (index), from arrival to the second
    /// their work was done; messages still waiting at the end count with their age then.
    pub waits: Vec<u64>,
    /// HPA syncs that got no metric (the scaler answered `UNAVAILABLE`).
    pub metric_errors: u32,
}

/// Both configurations on one trace.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub builtin: Run,
    pub blend: Run,
}

/// Where each loop's ticks fall: KEDA polls at the seconds `t` with
/// `t % pollingInterval == poll % pollingInterval`, the HPA syncs at
/// `t % syncPeriod == sync % syncPeriod`. The two loops are independent in a cluster, so a
/// comparison averages over several drawn phases ([`Phase::draw`]). blend-scaler's reads
/// have no phase of their own: they follow these calls, as the server's do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    pub poll: u64,
    pub sync: u64,
}

impl Phase {
    /// Polls on multiples of the polling interval, the HPA 7 s after: the one phase the model
    /// used before it drew them.
    pub const FIXED: Phase = Phase { poll: 0, sync: 7 };

    /// `n` phases drawn from `seed`: the same seed always gives the same phases. Offsets are
    /// drawn below 3600 s and taken modulo each loop's period where used.
    pub fn draw(seed: u64, n: usize) -> Vec<Phase> {
        let mut rng = super::generate::Rng::new(seed ^ 0x9_4A5E);
        (0..n)
            .map(|_| {
                let phase = Phase {
                    poll: rng.between(0, 3599),
                    sync: rng.between(0, 3599),
                };
                // Once the refresh loop's phase, before reads followed KEDA's calls: still
                // drawn, so a seed gives the polls and syncs it always gave.
                rng.between(0, 3599);
                phase
            })
            .collect()
    }

    /// The two offsets within the given periods, for the report.
    #[cfg(test)]
    pub fn within(&self, polling: u64, sync: u64) -> (u64, u64) {
        (self.poll % polling.max(1), self.sync % sync.max(1))
    }
}

/// The two configurations compared: KEDA's built-in triggers with their settings, and
/// blend-scaler's trigger with its own.
#[derive(Clone, Copy, Debug)]
pub struct Sides<'a> {
    pub builtin: &'a BuiltIns,
    pub builtin_settings: &'a Settings,
    pub plan: &'a Plan,
    pub blend_settings: &'a Settings,
}

/// Runs both configurations over the whole trace, at one phase of the loops.
pub fn simulate(trace: &Trace, sides: &Sides, phase: Phase) -> Outcome {
    let mut builtin = sides.builtin.clone();
    let mut blend = Blend::new(sides.plan, &sides.blend_settings.blend);
    Outcome {
        builtin: run(trace, sides.builtin_settings, phase, &mut builtin),
        blend: run(trace, sides.blend_settings, phase, &mut blend),
    }
}

/// What a scaler can see at one instant.
#[derive(Clone, Copy, Debug)]
pub struct World {
    pub now: DateTime<Utc>,
    pub backlog: u64,
    pub requests: f64,
}

/// A trigger configuration as KEDA and the HPA see it.
pub trait Scaler {
    /// Background work at second `t`; returns an activity change pushed to KEDA, if any.
    fn tick(&mut self, t: u64, world: &World) -> Option<bool>;
    /// One read of every trigger, as KEDA's poll and the HPA's metric read both make it:
    /// the metrics (an `Err` for a trigger that answered with an error) and whether any
    /// trigger is active.
    fn read(&mut self, t: u64, world: &World) -> (Vec<Result<Metric, ()>>, bool);
}

/// KEDA's built-in triggers: `azure-servicebus` (`messageCount`, `activationMessageCount`),
/// `prometheus` (`threshold`, `activationThreshold`) and `cron` (one window each), each
/// reading its upstream live on every call.
#[derive(Clone, Debug, Default)]
pub struct BuiltIns {
    pub servicebus: Option<(f64, f64)>,
    pub prometheus: Option<(f64, f64)>,
    pub cron: Vec<CronPlan>,
}

impl BuiltIns {
    /// The built-in triggers with the keys of a blend-scaler trigger.
    pub fn from_plan(plan: &Plan) -> Self {
        Self {
            servicebus: plan
                .servicebus
                .as_ref()
                .map(|s| (s.message_count, s.activation_message_count)),
            prometheus: plan
                .prometheus
                .as_ref()
                .map(|p| (p.threshold, p.activation_threshold)),
            // KEDA's cron trigger takes one window; several windows are several triggers.
            cron: plan
                .cron
                .iter()
                .flat_map(|c| {
                    c.windows.iter().map(|w| CronPlan {
                        timezone: c.timezone,
                        windows: vec![w.clone()],
                    })
                })
                .collect(),
        }
    }
}

impl Scaler for BuiltIns {
    fn tick(&mut self, _t: u64, _world: &World) -> Option<bool> {
        None
    }

    fn read(&mut self, _t: u64, world: &World) -> (Vec<Result<Metric, ()>>, bool) {
        let mut metrics = Vec::new();
        let mut active = false;
        if let Some((message_count, activation)) = self.servicebus {
            let value = world.backlog as f64;
            metrics.push(Ok(Metric {
                value,
                target: message_count,
            }));
            active |= value > activation;
        }
        if let Some((threshold, activation)) = self.prometheus {
            metrics.push(Ok(Metric {
                value: world.requests,
                target: threshold,
            }));
            active |= world.requests > activation;
        }
        for c in &self.cron {
            let state = c.state(world.now);
            // KEDA's cron scaler reports its desiredReplicas inside the window, 1 outside.
            let value = if state.active { state.replicas } else { 1 };
            metrics.push(Ok(Metric {
                value: f64::from(value),
                target: 1.0,
            }));
            active |= state.active;
        }
        (metrics, active)
    }
}

fn secs(t: u64) -> Duration {
    Duration::from_secs(t)
}

/// blend-scaler as one `external` (or `external-push`) trigger: the server's cache of each
/// upstream ([`Cached`]: read when the server's schedule says, for the calls KEDA makes) and
/// the real [`blend::decide`] on every call. As in the engine, a call only reads: the answer
/// is the readings', however many calls.
pub struct Blend<'p> {
    plan: &'p Plan,
    push: bool,
    servicebus: Cached,
    prometheus: Cached,
    /// The `StreamIsActive` stream is open (`external-push`, from the first second).
    streaming: bool,
    pushed: Option<bool>,
}

impl<'p> Blend<'p> {
    pub fn new(plan: &'p Plan, settings: &BlendSettings) -> Self {
        let interval = secs(settings.refresh_interval.max(1));
        Self {
            plan,
            push: settings.push,
            servicebus: Cached::new(interval, plan.policy.reads_rate()),
            prometheus: Cached::new(interval, false),
            streaming: false,
            pushed: None,
        }
    }

    /// The queue's cache: when KEDA asked for it and when it was read.
    #[cfg(test)]
    pub fn servicebus_log(&self) -> &Log {
        self.servicebus.log()
    }

    /// The decision at `at`, from a look at each cache (`keda`: a KEDA call's, which counts
    /// as demand and may wait for a read; otherwise the stream's).
    fn decision(&mut self, at: Duration, keda: bool, world: &World) -> blend::Decision {
        let sb = self
            .plan
            .servicebus
            .is_some()
            .then(|| self.servicebus.look(at, keda, world.backlog as f64));
        let prom = self
            .plan
            .prometheus
            .is_some()
            .then(|| self.prometheus.look(at, keda, world.requests));
        blend::decide(Inputs {
            plan: self.plan,
            now: world.now,
            servicebus: sb.as_ref(),
            prometheus: prom.as_ref(),
        })
    }

    /// The stream's look and what it sends: only changes of activity.
    fn stream(&mut self, at: Duration, world: &World) -> Option<bool> {
        let active = self.decision(at, false, world).active().ok()?;
        if self.pushed == Some(active) {
            return None;
        }
        self.pushed = Some(active);
        Some(active)
    }
}

impl Scaler for Blend<'_> {
    fn tick(&mut self, t: u64, world: &World) -> Option<bool> {
        let mut first = None;
        if self.push && !self.streaming {
            // KEDA opens the stream as it starts watching the ScaledObject; the stream looks
            // at once (waiting for the first reads) and keeps its groups at the fast interval.
            self.streaming = true;
            let has = (
                self.plan.servicebus.is_some(),
                self.plan.prometheus.is_some(),
            );
            if has.0 {
                self.servicebus.open_stream(secs(t));
            }
            if has.1 {
                self.prometheus.open_stream(secs(t));
            }
            first = self.stream(secs(t), world);
        }
        let until = secs(t + 1);
        let sb = self
            .plan
            .servicebus
            .is_some()
            .then(|| self.servicebus.advance(until, world.backlog as f64, false));
        let prom = self
            .plan
            .prometheus
            .is_some()
            .then(|| self.prometheus.advance(until, world.requests, false));
        if !self.push {
            return None;
        }
        // The stream looks again after each refresh.
        match sb.flatten().max(prom.flatten()) {
            Some(read) => self.stream(read, world).or(first),
            None => first,
        }
    }

    fn read(&mut self, t: u64, world: &World) -> (Vec<Result<Metric, ()>>, bool) {
        // KEDA reads an external scaler with GetMetrics, then IsActive.
        let metric = self
            .decision(secs(t), true, world)
            .replicas()
            .ok()
            .map(|r| Metric {
                value: f64::from(r),
                target: 1.0,
            });
        let active = self
            .decision(secs(t), true, world)
            .active()
            .unwrap_or(false);
        (vec![metric.ok_or(())], active)
    }
}

/// The deployment: pods by the second they become ready, oldest first.
#[derive(Clone, Debug, Default)]
struct Deployment {
    ready_at: Vec<u64>,
}

impl Deployment {
    fn replicas(&self) -> u32 {
        self.ready_at.len() as u32
    }

    fn ready(&self, t: u64) -> u32 {
        // Pods are added with a start time that only grows and removed from the end, so the
        // list stays sorted.
        self.ready_at.partition_point(|&r| r <= t) as u32
    }

    /// Scales to `n`: new pods start now; removed pods are the newest (not-ready first).
    fn scale(&mut self, n: u32, t: u64, start: u64) {
        let n = n as usize;
        while self.ready_at.len() < n {
            self.ready_at.push(t + start);
        }
        self.ready_at.truncate(n);
    }
}

/// KEDA's activation: the time a trigger was last seen active.
#[derive(Clone, Debug, Default)]
struct Activation {
    last_active: Option<u64>,
}

impl Activation {
    /// KEDA's answer to one activity report: the replica count it sets, if it sets one.
    fn report(&mut self, t: u64, active: bool, current: u32, keda: &Keda) -> Option<u32> {
        if active {
            self.last_active = Some(t);
            return (current == 0).then(|| keda.min_replicas.max(1));
        }
        let cooled = self
            .last_active
            .is_none_or(|at| t > at + keda.cooldown_period);
        (current > 0 && keda.min_replicas == 0 && cooled).then_some(0)
    }
}

/// Runs one configuration over the trace.
pub fn run(trace: &Trace, settings: &Settings, phase: Phase, scaler: &mut dyn Scaler) -> Run {
    let n = trace.seconds();
    let (keda, hpa, work) = (&settings.keda, &settings.hpa, &settings.workload);
    let mut out = Run {
        replicas: Vec::with_capacity(n),
        ready: Vec::with_capacity(n),
        backlog: Vec::with_capacity(n),
        oldest_age: Vec::with_capacity(n),
        waits: Vec::new(),
        metric_errors: 0,
    };
    let mut queue = Queue::default();
    let mut deployment = Deployment::default();
    // The deployment starts at its floor, its pods ready.
    deployment.scale(keda.min_replicas, 0, 0);
    let mut activation = Activation::default();
    let mut hpa_controller = Controller::default();
    let hpa_min = keda.min_replicas.max(1);
    let hpa_max = keda.max_replicas.max(hpa_min);
    let polling = keda.polling_interval.max(1);
    let sync = hpa.sync_period.max(1);
    let (poll_at, sync_at) = (phase.poll % polling, phase.sync % sync);

    for (t, (&messages, &requests)) in (0u64..).zip(trace.messages.iter().zip(&trace.requests)) {
        let world = World {
            now: trace.at(t),
            backlog: queue.backlog(),
            requests,
        };
        let scale_to = |target: Option<u32>, deployment: &mut Deployment| {
            if let Some(r) = target
                && r != deployment.replicas()
            {
                deployment.scale(r, t, work.pod_start_seconds);
            }
        };
        if t % polling == poll_at {
            let (_, active) = scaler.read(t, &world);
            let target = activation.report(t, active, deployment.replicas(), keda);
            scale_to(target, &mut deployment);
        }
        if t % sync == sync_at && deployment.replicas() > 0 {
            let (metrics, _) = scaler.read(t, &world);
            let current = deployment.replicas();
            let target = hpa_controller.sync(t, current, &metrics, hpa, hpa_min, hpa_max);
            if target.is_none() {
                out.metric_errors += 1;
            }
            scale_to(target, &mut deployment);
        }
        if let Some(active) = scaler.tick(t, &world) {
            let target = activation.report(t, active, deployment.replicas(), keda);
            scale_to(target, &mut deployment);
        }

        let ready = deployment.ready(t);
        out.replicas.push(deployment.replicas());
        out.ready.push(ready);
        out.backlog.push(queue.backlog());
        out.oldest_age.push(queue.oldest_age(t));
        queue.step_recording(
            t,
            messages,
            f64::from(ready) * work.messages_per_second_per_replica,
            &mut out.waits,
        );
    }
    queue.record_waiting(n as u64, &mut out.waits);
    out
}

#[cfg(test)]
mod tests;
