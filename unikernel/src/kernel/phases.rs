//! Named, timed initialisation phases: what a cold start spends its time on (and what a
//! checkpoint start will skip). Printed as they end and as one summary line.

use core::fmt::Write;

use log::info;

const MAX: usize = 16;

pub struct Phases {
    start: u64,
    last: u64,
    done: [(&'static str, u64); MAX],
    n: usize,
}

impl Phases {
    /// Starts timing at the current instant (boot time is measured from entry anyway).
    pub fn new() -> Self {
        let now = crate::time::now_us();
        Self {
            start: 0,
            last: now,
            done: [("", 0); MAX],
            n: 0,
        }
    }

    /// A restart in place: the total counts from the error at `error_us`; the devices were
    /// quiesced by `quiesced_us` (a phase of its own), and the next mark counts from there.
    pub fn restart(error_us: u64, quiesced_us: u64) -> Self {
        let mut p = Self {
            start: error_us,
            last: quiesced_us,
            done: [("", 0); MAX],
            n: 0,
        };
        p.record("quiesce", quiesced_us.saturating_sub(error_us));
        p
    }

    /// When this start began (guest entry for a boot, the restart for a restart in place).
    pub fn started_at(&self) -> u64 {
        self.start
    }

    /// Ends the phase running since the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        let now = crate::time::now_us();
        self.record(name, now - self.last);
        self.last = now;
    }

    /// Records a phase measured elsewhere (it does not move the mark).
    pub fn record(&mut self, name: &'static str, us: u64) {
        if self.n < MAX {
            self.done[self.n] = (name, us);
            self.n += 1;
        }
        log::debug!("phase: {name} {us} us");
    }

    /// `phases: a=1 b=2 ... total=N` (microseconds).
    pub fn summary(&self) {
        let mut line = heapless_line();
        for (name, us) in &self.done[..self.n] {
            let _ = write!(line, " {name}={us}");
        }
        let _ = write!(line, " total={}", crate::time::now_us() - self.start);
        info!("phases (us):{}", line.as_str());
    }
}

/// A small fixed buffer for the summary (no allocation needed).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

fn heapless_line() -> Line {
    Line {
        buf: [0; 256],
        len: 0,
    }
}
