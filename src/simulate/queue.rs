//! The queue the pods work: arrival cohorts, one per second, first in first out, so the age of
//! the oldest message and each message's wait are exact to the second.

use std::collections::VecDeque;

/// A FIFO queue of arrival cohorts, one per second, in whole messages.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    cohorts: VecDeque<(u64, u64)>,
    backlog: u64,
    /// Fractional arrivals not yet a whole message.
    arrivals_carry: f64,
    /// Fractional work left from a busy second.
    work_carry: f64,
}

impl Queue {
    pub fn backlog(&self) -> u64 {
        self.backlog
    }

    /// How long the oldest waiting message has waited at instant `t`: messages that arrived
    /// during second `s` have waited `t - s` seconds (rounded up to the second).
    pub fn oldest_age(&self, t: u64) -> u64 {
        self.cohorts
            .front()
            .map_or(0, |(s, _)| t.saturating_sub(*s))
    }

    /// Second `t`: `rate` messages arrive, then `capacity` messages' worth of work is done,
    /// oldest first. Returns the messages completed.
    #[cfg(test)]
    pub fn step(&mut self, t: u64, rate: f64, capacity: f64) -> u64 {
        self.step_recording(t, rate, capacity, &mut Vec::new())
    }

    /// [`Queue::step`], adding each completed message's wait (seconds) to `waits`.
    pub fn step_recording(
        &mut self,
        t: u64,
        rate: f64,
        capacity: f64,
        waits: &mut Vec<u64>,
    ) -> u64 {
        let arriving = self.arrivals_carry + rate;
        // A hair of tolerance, so 0.3 ten times is 3 messages, not 2.999… of them.
        let whole = (arriving + 1e-9).floor();
        self.arrivals_carry = (arriving - whole).max(0.0);
        if whole >= 1.0 {
            self.cohorts.push_back((t, whole as u64));
            self.backlog += whole as u64;
        }
        let work = capacity + self.work_carry;
        let mut budget = (work + 1e-9).floor() as u64;
        let mut done = 0;
        while budget > 0
            && let Some(front) = self.cohorts.front_mut()
        {
            let take = front.1.min(budget);
            record(waits, t - front.0, take);
            front.1 -= take;
            budget -= take;
            done += take;
            if front.1 == 0 {
                self.cohorts.pop_front();
            }
        }
        self.backlog -= done;
        // Part of a message's work carries over only while there is work to do.
        self.work_carry = if self.backlog > 0 {
            (work - (work + 1e-9).floor()).max(0.0)
        } else {
            0.0
        };
        done
    }
}

fn record(waits: &mut Vec<u64>, wait: u64, count: u64) {
    let i = wait as usize;
    if waits.len() <= i {
        waits.resize(i + 1, 0);
    }
    waits[i] += count;
}

impl Queue {
    /// Adds the messages still waiting at instant `t` to `waits`, at their age.
    pub fn record_waiting(&self, t: u64, waits: &mut Vec<u64>) {
        for &(s, n) in &self.cohorts {
            record(waits, t - s, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_first_in_first_out_and_ages_are_exact() {
        let mut q = Queue::default();
        q.step(0, 10.0, 0.0);
        q.step(1, 10.0, 0.0);
        assert_eq!((q.backlog(), q.oldest_age(2)), (20, 2));
        // 15 messages of work: all of second 0 and half of second 1.
        assert_eq!(q.step(2, 0.0, 15.0), 15);
        assert_eq!((q.backlog(), q.oldest_age(3)), (5, 2));
        q.step(3, 0.0, 15.0);
        assert_eq!((q.backlog(), q.oldest_age(4)), (0, 0));
    }

    #[test]
    fn each_message_is_counted_once_with_its_wait() {
        let mut q = Queue::default();
        let mut waits = Vec::new();
        q.step_recording(0, 10.0, 4.0, &mut waits);
        q.step_recording(1, 0.0, 4.0, &mut waits);
        q.record_waiting(2, &mut waits);
        // 4 done at once, 4 a second later, 2 still waiting at 2 s.
        assert_eq!(waits, vec![4, 4, 2]);
    }

    #[test]
    fn fractional_rates_add_up_to_whole_messages() {
        let mut q = Queue::default();
        let mut done = q.step(0, 10.3, 0.25);
        for t in 1..100 {
            done += q.step(t, 0.3, 0.25);
        }
        // 40 arrived; the queue never emptied, so 100 x 0.25 = 25 messages of work were
        // done, none lost to rounding.
        assert_eq!(done + q.backlog(), 40);
        assert_eq!(done, 25);
        // Work left over while the queue is empty is not banked.
        let mut idle = Queue::default();
        assert_eq!(idle.step(0, 0.0, 0.75) + idle.step(1, 1.0, 0.75), 0);
    }
}
