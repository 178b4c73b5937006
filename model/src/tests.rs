//! The model's own rules, case by case: each one a way a server could be wrong.

use super::*;

fn write(m: &mut Model, kind: Kind, offset: u64, len: u64) -> Vec<u8> {
    let id = m.start(0, kind, offset, len).unwrap();
    let data = matches!(kind, Kind::Write { .. }).then(|| m.payload_of(id));
    m.complete(id, true, None).unwrap();
    data.unwrap_or_else(|| vec![0; len as usize])
}

fn read(m: &mut Model, offset: u64, data: &[u8]) -> Result<(), String> {
    let id = m.start(0, Kind::Read, offset, data.len() as u64).unwrap();
    m.complete(id, true, Some(data))
}

#[test]
fn a_stale_read_after_write_zeroes_diverges() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    let old = write(&mut m, Kind::Write { fua: false }, 4096, 4096);
    write(
        &mut m,
        Kind::Zero {
            fua: true,
            no_hole: false,
        },
        4096,
        4096,
    );
    let e = read(&mut m, 4096, &old).unwrap_err();
    assert!(e.contains("Zero"), "{e}");
    read(&mut m, 4096, &[0; 4096]).unwrap();
}

#[test]
fn sectors_identify_their_write_and_address() {
    let p = payload(7, 1024, 1024);
    assert_eq!(classify(&p[..512], 2), Observed::Data(7));
    assert_eq!(classify(&p[512..], 3), Observed::Data(7));
    // The right data at the wrong address is garbage.
    assert_eq!(classify(&p[..512], 3), Observed::Garbage);
    assert_eq!(classify(&[0; 512], 9), Observed::Zero);
}

#[test]
fn a_crash_may_lose_unflushed_writes_but_not_flushed_ones_under_disk() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    let a = write(&mut m, Kind::Write { fua: false }, 0, 512);
    let id = m.start(0, Kind::Flush, 0, 0).unwrap();
    m.complete(id, true, None).unwrap();
    let b = write(&mut m, Kind::Write { fua: false }, 0, 512);
    m.crash();
    // Either the flushed value or the newer one; never the zeroes from before.
    assert!(m.clone_check(0, &a));
    assert!(m.clone_check(0, &b));
    assert!(!m.clone_check(0, &[0; 512]));
}

#[test]
fn fua_and_nvlog_make_a_write_durable_at_once() {
    for (durability, fua) in [(Durability::Disk, true), (Durability::Nvlog, false)] {
        let mut m = Model::new(&[1 << 20], durability);
        write(&mut m, Kind::Write { fua: false }, 0, 512);
        let b = write(&mut m, Kind::Write { fua }, 0, 512);
        m.crash();
        assert_eq!(m.uncertain_ranges(0), vec![]);
        m.check(0, 0, &b, "after crash").unwrap();
    }
}

#[test]
fn a_flush_covers_only_writes_acknowledged_before_it_was_sent() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    let flush = m.start(0, Kind::Flush, 0, 0).unwrap();
    let a = write(&mut m, Kind::Write { fua: false }, 0, 512);
    m.complete(flush, true, None).unwrap();
    m.crash();
    // The write completed after the FLUSH was sent: it may be lost.
    assert!(m.clone_check(0, &[0; 512]));
    assert!(m.clone_check(0, &a));
}

#[test]
fn failed_and_unanswered_writes_are_old_or_new_and_the_first_read_settles() {
    let mut m = Model::new(&[1 << 20], Durability::Nvlog);
    m.errors_allowed = true;
    let id = m.start(0, Kind::Write { fua: false }, 0, 512).unwrap();
    let new = m.payload_of(id);
    m.complete(id, false, None).unwrap();
    assert!(m.clone_check(0, &[0; 512]));
    m.check(0, 0, &new, "read").unwrap();
    // Having read the new value, the old one may not come back.
    assert!(!m.clone_check(0, &[0; 512]));
    let lost = m.start(0, Kind::Write { fua: false }, 512, 512).unwrap();
    let p = m.payload_of(lost);
    m.crash();
    assert!(m.clone_check(512, &p));
    assert!(m.clone_check(512, &[0; 512]));
}

#[test]
fn overlapping_changes_cannot_be_in_flight_together() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    let _w = m.start(0, Kind::Write { fua: false }, 0, 4096).unwrap();
    assert_eq!(m.start(0, Kind::Read, 2048, 4096), Err(Refused::Overlaps));
    assert!(m.start(0, Kind::Read, 4096, 4096).is_ok());
    assert!(m.start(0, Kind::Flush, 0, 0).is_ok());
    assert_eq!(m.start(0, Kind::Read, 1, 512), Err(Refused::Range));
}

#[test]
fn trimmed_sectors_read_as_anything() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    write(&mut m, Kind::Write { fua: false }, 0, 512);
    write(&mut m, Kind::Trim { fua: false }, 0, 512);
    read(&mut m, 0, &[7; 512]).unwrap();
}

#[test]
fn a_flush_after_a_crash_does_not_make_a_lost_write_durable() {
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    let a = write(&mut m, Kind::Write { fua: true }, 0, 512);
    let b = write(&mut m, Kind::Write { fua: false }, 0, 512);
    m.crash();
    // B was lost: the read shows A.
    m.check(0, 0, &a, "after crash").unwrap();
    let id = m.start(0, Kind::Flush, 0, 0).unwrap();
    m.complete(id, true, None).unwrap();
    m.crash();
    assert!(m.clone_check(0, &a));
    // Read back after a crash and then flushed, a surviving write is durable.
    let mut m = Model::new(&[1 << 20], Durability::Disk);
    write(&mut m, Kind::Write { fua: true }, 0, 512);
    let b2 = write(&mut m, Kind::Write { fua: false }, 0, 512);
    m.crash();
    m.check(0, 0, &b2, "after crash").unwrap();
    let id = m.start(0, Kind::Flush, 0, 0).unwrap();
    m.complete(id, true, None).unwrap();
    m.crash();
    assert!(m.clone_check(0, &b2));
    assert!(!m.clone_check(0, &a));
    let _ = b;
}

impl Model {
    /// Whether `data` at `offset` of export 0 is allowed, without settling anything.
    fn clone_check(&self, offset: u64, data: &[u8]) -> bool {
        let mut copy = Model {
            exports: self
                .exports
                .iter()
                .map(|e| Export {
                    sectors: e.sectors.clone(),
                    active: e.active.clone(),
                })
                .collect(),
            durability: self.durability,
            flights: self.flights.clone(),
            next_id: self.next_id,
            next_version: self.next_version,
            completions: self.completions,
            errors_allowed: self.errors_allowed,
            counts: self.counts,
        };
        copy.check(0, offset, data, "test").is_ok()
    }
}
