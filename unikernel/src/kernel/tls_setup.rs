//! The NBD service's TLS, made at each start of the service (the heap is new after a restart
//! in place, so nothing of it outlives one): the mode from `nbd.tls=`, the certificates from
//! the boot module's `[tls.*]` sections (`unikernel::boot_module`, which the host fills from a
//! QEMU-style credentials directory), randomness from RDSEED/RDRAND, the wall clock from the
//! RTC (for client certificates).
//!
//! Failing closed: with `nbd.tls=require`, anything missing (no certificates, no hardware
//! randomness, a key rustls refuses) means the NBD service does not start, so nothing is ever
//! served in clear. With `nbd.tls=on` the service starts without TLS, and says why.

use alloc::format;
use alloc::string::String;
use log::{info, warn};
use unikernel::boot_module::{BootModule, TLS_CA_CERT, TLS_SERVER_CERT, TLS_SERVER_KEY};
use unikernel::cmdline::Config;
use unikernel::nbd::tls::{TlsMode, TlsSettings};
use unikernel::tls::{Pem, TlsConfig};

use crate::arch::{entropy, rtc};

/// The settings to serve with, or why the service must not start.
pub fn settings(cfg: &Config, module: &BootModule<'_>) -> Result<TlsSettings, String> {
    let mode = cfg.nbd_tls;
    if mode == TlsMode::Off {
        return Ok(TlsSettings::default());
    }
    match config(cfg, module) {
        Ok(c) => {
            info!(
                "nbd: TLS {} (1.3 and 1.2; client certificates {})",
                if mode == TlsMode::Require {
                    "required"
                } else {
                    "offered"
                },
                if c.verify_peer() {
                    "required"
                } else {
                    "not asked for"
                }
            );
            TlsSettings::new(mode, Some(c)).map_err(String::from)
        }
        Err(why) if mode == TlsMode::Require => Err(format!("TLS required, but {why}")),
        Err(why) => {
            warn!("nbd: TLS off: {why}; serving plaintext only");
            Ok(TlsSettings::default())
        }
    }
}

fn config(cfg: &Config, module: &BootModule<'_>) -> Result<TlsConfig, String> {
    let section = |name: &str| {
        module.section(name).ok_or_else(|| {
            format!("the boot module has no [{name}] section (tandem run --tls DIR gives it)")
        })
    };
    let pem = Pem {
        ca_cert: section(TLS_CA_CERT)?.as_bytes(),
        server_cert: section(TLS_SERVER_CERT)?.as_bytes(),
        server_key: section(TLS_SERVER_KEY)?.as_bytes(),
    };
    entropy::check().map_err(String::from)?;
    if cfg.nbd_tls_verify_peer && rtc::unix_now().is_none() {
        warn!("nbd: no wall clock (RTC): client certificates cannot be checked and are refused");
    }
    TlsConfig::from_pem(&pem, cfg.nbd_tls_verify_peer, entropy::fill, rtc::unix_now)
        .map_err(|e| format!("{e}"))
}
