//! The mirror gate: with the NVLOG mirrored to another host (`mirror=sync|async`), when a
//! logged write may be acknowledged to its client.
//!
//! The mirror sender on this node's host ships committed records to the other host and,
//! once the other side acknowledges them, says so in the [`MirrorBlock`] in page 0 of this
//! node's log region. The gate reads that block on every poll and holds each write's reply
//! until its last record is covered:
//! - `sync`: the record is in the mirror (or retired: on the shared disk);
//! - `async`: the record is at most `mirror.max_lag` records past the mirror;
//! - the mirror is lost (the sender says the link is down, or its block stops changing for
//!   `mirror.timeout_ms`): replies wait. Consistency points keep flushing the log. Once
//!   everything the copy vouched for is on disk, the sender marks the copy outdated (so the
//!   other host never replays it: replaying records older than what the disks now hold
//!   would undo acknowledged writes) and says `Outdated`. Then, under
//!   `mirror.policy=degraded`, a write is acknowledged once it is on disk (write-through);
//!   under `stop` replies wait for the mirror to come back.
//!
//! An error reply is never held: it acknowledges nothing.

use tandem_formats::cmdline::{MirrorConfig, MirrorMode, MirrorPolicy};
use tandem_formats::mgmt_status::MIRROR_STATES;
use tandem_formats::mirror::{LinkState, MirrorBlock};

/// The mirror as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorStatus {
    /// `mirror=off`.
    Off,
    /// The sender is alive and connected.
    Up,
    /// Lost and the copy outdated; writes wait for the disk (policy `degraded`).
    Degraded,
    /// Lost; replies wait (for the copy to be outdated under `degraded`, for the mirror
    /// under `stop`).
    Stopped,
}

impl MirrorStatus {
    /// The status reply's word (`tandem_formats::mgmt_status::MIRROR_STATES`); `None` when
    /// off.
    pub fn name(self) -> Option<&'static str> {
        let [up, degraded, stopped] = MIRROR_STATES;
        match self {
            MirrorStatus::Off => None,
            MirrorStatus::Up => Some(up),
            MirrorStatus::Degraded => Some(degraded),
            MirrorStatus::Stopped => Some(stopped),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MirrorGate {
    cfg: MirrorConfig,
    /// The last valid block, and when (µs) its beat last changed.
    seen: Option<MirrorBlock>,
    beat_at_us: u64,
    /// When the gate first looked (µs): a sender gets `timeout_ms` to appear.
    since_us: Option<u64>,
    /// The log the mirror must be counting in.
    log_id: u64,
    status: MirrorStatus,
    /// Times the mirror was lost.
    pub losses: u64,
}

impl MirrorGate {
    pub fn new(cfg: MirrorConfig, log_id: u64) -> Self {
        Self {
            cfg,
            seen: None,
            beat_at_us: 0,
            since_us: None,
            log_id,
            status: if cfg.mode == MirrorMode::Off {
                MirrorStatus::Off
            } else {
                MirrorStatus::Up
            },
            losses: 0,
        }
    }

    pub fn status(&self) -> MirrorStatus {
        self.status
    }

    /// Every record up to this is in the mirror (or retired), as the sender last said.
    pub fn mirrored(&self) -> u64 {
        self.seen
            .filter(|b| b.log_id == self.log_id)
            .map_or(0, |b| b.mirrored)
    }

    /// Takes a read of the block's bytes at `now_us`; returns the new status when it
    /// changed.
    pub fn observe(&mut self, bytes: &[u8], now_us: u64) -> Option<MirrorStatus> {
        if self.cfg.mode == MirrorMode::Off {
            return None;
        }
        let since = *self.since_us.get_or_insert(now_us);
        if let Some(b) = MirrorBlock::parse(bytes) {
            if self.seen.is_none_or(|s| s.beat != b.beat) {
                self.beat_at_us = now_us;
            }
            self.seen = Some(b);
        }
        let timeout = self.cfg.timeout_ms * 1000;
        let (lost, outdated) = match self.seen {
            None => (now_us.saturating_sub(since) > timeout, false),
            Some(b) => {
                let silent = now_us.saturating_sub(self.beat_at_us) > timeout;
                (
                    b.link() != Some(LinkState::Up) || silent,
                    b.link() == Some(LinkState::Outdated) && !silent,
                )
            }
        };
        let status = match (lost, outdated, self.cfg.policy) {
            (false, _, _) => MirrorStatus::Up,
            (true, true, MirrorPolicy::Degraded) => MirrorStatus::Degraded,
            (true, _, _) => MirrorStatus::Stopped,
        };
        if status == self.status {
            return None;
        }
        if status != MirrorStatus::Up {
            self.losses += 1;
        }
        self.status = status;
        Some(status)
    }

    /// Whether a write whose last record is `seq` may be acknowledged; `on_disk`: that
    /// record is on its disk (flushed) or retired.
    pub fn allows(&self, seq: u64, on_disk: bool) -> bool {
        let mirrored = self.mirrored();
        let covered = match self.cfg.mode {
            MirrorMode::Off => return true,
            MirrorMode::Sync => seq <= mirrored,
            MirrorMode::Async => seq <= mirrored.saturating_add(self.cfg.max_lag),
        };
        covered || (on_disk && self.status == MirrorStatus::Degraded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    fn cfg(mode: MirrorMode, policy: MirrorPolicy) -> MirrorConfig {
        MirrorConfig {
            mode,
            policy,
            max_lag: 4,
            timeout_ms: 100,
        }
    }

    fn block(state: LinkState, mirrored: u64, beat: u64) -> alloc::vec::Vec<u8> {
        MirrorBlock::new(state, 9, mirrored, beat)
            .as_bytes()
            .to_vec()
    }

    #[test]
    fn sync_holds_until_mirrored_and_off_never_holds() {
        let mut g = MirrorGate::new(cfg(MirrorMode::Sync, MirrorPolicy::Degraded), 9);
        g.observe(&block(LinkState::Up, 5, 1), 0);
        assert!(g.allows(5, false) && !g.allows(6, false));
        assert!(
            !g.allows(6, true),
            "on disk is not enough while the mirror is up"
        );
        let off = MirrorGate::new(MirrorConfig::default(), 9);
        assert!(off.allows(u64::MAX, false));
    }

    #[test]
    fn a_block_of_another_log_or_a_torn_one_mirrors_nothing() {
        let mut g = MirrorGate::new(cfg(MirrorMode::Sync, MirrorPolicy::Stop), 10);
        g.observe(&block(LinkState::Up, 5, 1), 0);
        assert_eq!(g.mirrored(), 0, "log 9's numbers are not log 10's");
        let mut g = MirrorGate::new(cfg(MirrorMode::Sync, MirrorPolicy::Stop), 9);
        g.observe(&block(LinkState::Up, 5, 1), 0);
        let mut torn = block(LinkState::Up, 50, 2);
        torn[30] ^= 1;
        g.observe(&torn, 10);
        assert_eq!(g.mirrored(), 5, "the last good block counts");
    }

    #[test]
    fn async_allows_max_lag() {
        let mut g = MirrorGate::new(cfg(MirrorMode::Async, MirrorPolicy::Stop), 9);
        g.observe(&block(LinkState::Up, 5, 1), 0);
        assert!(g.allows(9, false) && !g.allows(10, false));
    }

    #[test]
    fn a_silent_or_down_sender_is_lost_and_the_policy_applies() {
        let mut g = MirrorGate::new(cfg(MirrorMode::Sync, MirrorPolicy::Degraded), 9);
        assert_eq!(
            g.observe(&[0; 64], 0),
            None,
            "a sender gets the timeout to appear"
        );
        assert_eq!(g.observe(&[0; 64], 100_001), Some(MirrorStatus::Stopped));
        assert!(
            !g.allows(3, true),
            "no write-through before the copy is outdated"
        );
        assert_eq!(
            g.observe(&block(LinkState::Outdated, 0, 1), 100_002),
            Some(MirrorStatus::Degraded)
        );
        assert!(g.allows(3, true) && !g.allows(3, false));
        assert_eq!(
            g.observe(&block(LinkState::Up, 3, 2), 100_003),
            Some(MirrorStatus::Up)
        );
        // The beat stops changing: lost again after the timeout.
        assert_eq!(g.observe(&block(LinkState::Up, 3, 2), 150_000), None);
        assert_eq!(
            g.observe(&block(LinkState::Up, 3, 2), 200_004),
            Some(MirrorStatus::Stopped)
        );
        // A silent sender's old `Outdated` does not allow write-through either.
        assert_eq!(
            g.observe(&block(LinkState::Outdated, 3, 3), 200_005),
            Some(MirrorStatus::Degraded)
        );
        assert_eq!(
            g.observe(&block(LinkState::Outdated, 3, 3), 400_000),
            Some(MirrorStatus::Stopped)
        );
        let mut s = MirrorGate::new(cfg(MirrorMode::Sync, MirrorPolicy::Stop), 9);
        assert_eq!(
            s.observe(&block(LinkState::Down, 3, 1), 0),
            Some(MirrorStatus::Stopped)
        );
        assert!(!s.allows(4, true), "stop holds even what is on disk");
        assert!(s.allows(3, false), "what is mirrored stays acknowledged");
        assert_eq!(
            s.observe(&block(LinkState::Outdated, 3, 2), 1),
            None,
            "stop ignores an outdated copy"
        );
        assert_eq!(s.losses, 1);
    }
}
