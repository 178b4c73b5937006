//! Accelerator choice: KVM where it is real, TCG otherwise.
//!
//! Some hosts expose a `/dev/kvm` that is a software implementation (nested KVM-PVM): it
//! opens fine but runs ring-0 guest code at emulation speed and dies on SSE shortly after a
//! VM exit. Such hosts show neither `vmx` nor `svm` in `/proc/cpuinfo`. So `auto` picks KVM
//! only when both facts hold: `/dev/kvm` opens read-write *and* the CPU flags show hardware
//! virtualisation. The decision itself is [`decide`], a pure function of those two facts.
//!
//! Precedence of the request: the `--accel` flag, then the `TANDEM_ACCEL` environment
//! variable, then `auto`.

use std::fmt;
use std::fs::OpenOptions;
use std::str::FromStr;

/// Environment variable that sets the default accelerator choice (`kvm`, `tcg` or `auto`).
pub const ENV_ACCEL: &str = "TANDEM_ACCEL";

/// The accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's portable binary translator (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    /// The name QEMU and the CLI use.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when it is real hardware virtualisation, else TCG.
    #[default]
    Auto,
    /// Force KVM.
    Kvm,
    /// Force TCG.
    Tcg,
}

impl FromStr for AccelChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!(
                "unknown accelerator '{other}' (expected auto, kvm or tcg)"
            )),
        }
    }
}

/// The facts about the host that `auto` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` exists.
    pub kvm_present: bool,
    /// `/dev/kvm` opened read-write.
    pub kvm_openable: bool,
    /// `/proc/cpuinfo` flags contain `vmx` or `svm`.
    pub hw_virt_flags: bool,
}

impl HostFacts {
    /// Probe this host.
    pub fn probe() -> HostFacts {
        let kvm_present = std::path::Path::new("/dev/kvm").exists();
        let kvm_openable = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let hw_virt_flags = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| cpuinfo_has_hw_virt(&s))
            .unwrap_or(false);
        HostFacts {
            kvm_present,
            kvm_openable,
            hw_virt_flags,
        }
    }
}

/// True when any `flags` line of a `/proc/cpuinfo` text lists `vmx` or `svm`.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == "flags").then_some(value)
        })
        .any(|flags| flags.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelDecision {
    /// The accelerator to use.
    pub accel: Accel,
    /// A short human reason, e.g. `tcg: /dev/kvm present but CPU flags show neither vmx nor svm`.
    pub reason: String,
}

impl fmt::Display for AccelDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Decide the accelerator from the request and the host facts. Pure, so it unit-tests.
pub fn decide(choice: AccelChoice, facts: &HostFacts) -> AccelDecision {
    let (accel, reason) = match choice {
        AccelChoice::Kvm => (Accel::Kvm, "kvm: requested".to_string()),
        AccelChoice::Tcg => (Accel::Tcg, "tcg: requested".to_string()),
        AccelChoice::Auto => match (facts.kvm_present, facts.kvm_openable, facts.hw_virt_flags) {
            (_, true, true) => (
                Accel::Kvm,
                "kvm: /dev/kvm opens read-write and CPU flags show vmx/svm".to_string(),
            ),
            (_, true, false) => (
                Accel::Tcg,
                "tcg: /dev/kvm present but CPU flags show neither vmx nor svm".to_string(),
            ),
            (true, false, _) => (
                Accel::Tcg,
                "tcg: /dev/kvm present but cannot be opened read-write".to_string(),
            ),
            (false, false, _) => (Accel::Tcg, "tcg: no /dev/kvm".to_string()),
        },
    };
    AccelDecision { accel, reason }
}

/// Resolve the request: the CLI flag wins over `TANDEM_ACCEL`, which wins over `auto`.
/// `env_value` is the raw value of `TANDEM_ACCEL` (if set); an invalid value is an error.
pub fn resolve_choice(
    flag: Option<AccelChoice>,
    env_value: Option<&str>,
) -> Result<AccelChoice, String> {
    if let Some(choice) = flag {
        return Ok(choice);
    }
    match env_value {
        Some(v) if !v.trim().is_empty() => v
            .parse::<AccelChoice>()
            .map_err(|e| format!("{ENV_ACCEL}: {e}")),
        _ => Ok(AccelChoice::Auto),
    }
}

/// Resolve the request against this process's environment and probe the host.
pub fn choose(flag: Option<AccelChoice>) -> anyhow::Result<AccelDecision> {
    let env = std::env::var(ENV_ACCEL).ok();
    let choice = resolve_choice(flag, env.as_deref()).map_err(anyhow::Error::msg)?;
    let mut decision = decide(choice, &HostFacts::probe());
    if flag.is_none() && choice != AccelChoice::Auto {
        decision.reason = format!("{} (from {ENV_ACCEL})", decision.reason);
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(present: bool, open: bool, flags: bool) -> HostFacts {
        HostFacts {
            kvm_present: present,
            kvm_openable: open,
            hw_virt_flags: flags,
        }
    }

    #[test]
    fn auto_needs_both_device_and_flags() {
        assert_eq!(
            decide(AccelChoice::Auto, &facts(true, true, true)).accel,
            Accel::Kvm
        );
        let d = decide(AccelChoice::Auto, &facts(true, true, false));
        assert_eq!(d.accel, Accel::Tcg);
        assert_eq!(
            d.reason,
            "tcg: /dev/kvm present but CPU flags show neither vmx nor svm"
        );
        let d = decide(AccelChoice::Auto, &facts(true, false, true));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("cannot be opened"));
        let d = decide(AccelChoice::Auto, &facts(false, false, true));
        assert_eq!(d.accel, Accel::Tcg);
        assert_eq!(d.reason, "tcg: no /dev/kvm");
    }

    #[test]
    fn forced_choices_ignore_facts() {
        assert_eq!(
            decide(AccelChoice::Kvm, &facts(false, false, false)).accel,
            Accel::Kvm
        );
        assert_eq!(
            decide(AccelChoice::Tcg, &facts(true, true, true)).accel,
            Accel::Tcg
        );
    }

    #[test]
    fn flag_wins_over_env_wins_over_auto() {
        assert_eq!(
            resolve_choice(Some(AccelChoice::Tcg), Some("kvm")),
            Ok(AccelChoice::Tcg)
        );
        assert_eq!(resolve_choice(None, Some("kvm")), Ok(AccelChoice::Kvm));
        assert_eq!(resolve_choice(None, Some(" TCG ")), Ok(AccelChoice::Tcg));
        assert_eq!(resolve_choice(None, Some("")), Ok(AccelChoice::Auto));
        assert_eq!(resolve_choice(None, None), Ok(AccelChoice::Auto));
        assert!(resolve_choice(None, Some("hvf")).is_err());
    }

    #[test]
    fn cpuinfo_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n";
        let amd = "flags : fpu svm\n";
        let none = "flags\t\t: fpu vme sse2 vmxnot\nvmx : 1\n";
        assert!(cpuinfo_has_hw_virt(intel));
        assert!(cpuinfo_has_hw_virt(amd));
        assert!(!cpuinfo_has_hw_virt(none));
        assert!(!cpuinfo_has_hw_virt(""));
    }
}
