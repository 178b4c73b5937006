//! `scripts/deps` from every starting state, checked against this machine's real apt.
//!
//! Each starting state is a dpkg status database built from this machine's
//! (`/var/lib/dpkg/status`): bare Debian 12 (no QEMU, no NBD tools), the machine image of
//! this project's kind (bare plus the backported `qemu-utils` 10.0.2 whose repository is not
//! in the apt sources, and which `Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)`), QEMU 7.2
//! installed (what apt says the image's install leads to) and partial states. For each,
//! `scripts/deps` (with `TANDEM_DEPS_PLAN=1 TANDEM_DEPS_STATUS=FILE`) says what it would give
//! `apt-get install`, and `apt-get install -s -o Dir::State::status=FILE` with those
//! arguments must be accepted: exit 0, no broken packages. Nothing is installed.
//!
//! The cluster packages (corosync, Pacemaker, resource-agents, libvirtd) are planned with
//! `--no-install-recommends`, and from a starting state without systemd (a container image)
//! their simulated install brings neither systemd nor systemd-sysv; with recommends it
//! would (so the flag is needed, not decoration).
//!
//! Needs apt's package lists (`apt-get update` once); fails saying so when they are missing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tandem_qemu::scratch::TempDir;
use tandem_tests::workspace_root;

/// The version of the backported `qemu-utils` the machine image ships.
const BACKPORT: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

/// Its status stanza, as found on a fresh machine of this project's kind on 2026-12-03
/// (description shortened). `Depends` is reduced to what the base state has installed.
const BACKPORT_QEMU_UTILS: &str = "Package: qemu-utils
Status: install ok installed
Priority: optional
Section: otherosfs
Installed-Size: 12118
Maintainer: Debian QEMU Team <pkg-qemu-devel@lists.alioth.debian.org>
Architecture: amd64
Multi-Arch: foreign
Source: qemu
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Replaces: qemu-system-common (<< 1:8.0+dfsg-5~)
Depends: libaio1 (>= 0.3.93), libc6 (>= 2.34), libfuse3-3 (>= 3.2.3), libglib2.0-0 (>= 2.67.3), libgmp10 (>= 2:6.2.1+dfsg1), libgnutls30 (>= 3.7.5), libhogweed6, libnettle8 (>= 3.8~), libnuma1 (>= 2.0.11), libselinux1 (>= 3.1~), liburing2 (>= 2.3), libzstd1 (>= 1.5.2), zlib1g (>= 1:1.1.4)
Recommends: qemu-block-extra (= 1:10.0.2+ds-2+deb13u1~bpo12+1)
Breaks: qemu-system-common (<< 1:8.0+dfsg-5~)
Description: QEMU utilities
Homepage: http://www.qemu.org/";

/// A backported `qemu-block-extra` of the same build (the image does not have it; a machine
/// that installed the backport's recommends would).
const BACKPORT_BLOCK_EXTRA: &str = "Package: qemu-block-extra
Status: install ok installed
Priority: optional
Section: otherosfs
Architecture: amd64
Multi-Arch: same
Source: qemu
Version: 1:10.0.2+ds-2+deb13u1~bpo12+1
Depends: qemu-utils (= 1:10.0.2+ds-2+deb13u1~bpo12+1)
Description: extra block backend modules for qemu-system and qemu-utils";

/// The packages `scripts/deps` maps its commands to that a bare Debian 12 lacks.
const TOOL_PACKAGES: &[&str] = &[
    "libnbd-bin",
    "fio",
    "libvirt-clients",
    "libxml2-utils",
    "corosync",
    "pacemaker",
    "pacemaker-cli-utils",
    "resource-agents",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
];

/// The cluster packages (the hosts-as-namespaces tests): they ship services, and none of
/// them may bring an init system with it.
const CLUSTER_PACKAGES: &[&str] = &[
    "corosync",
    "pacemaker",
    "pacemaker-cli-utils",
    "resource-agents",
    "libvirt-daemon",
    "libvirt-daemon-driver-qemu",
];

/// The init-system packages the cluster packages must not pull in (libvirt-daemon-system,
/// a recommendation of libvirt-daemon, depends on systemd-sysv).
const INIT_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "libvirt-daemon-system"];

/// What the script installed before (all missing packages and qemu-utils, unpinned) on the
/// image: the command line that failed with "held broken packages".
const NAIVE: &[&str] = &[
    "-y",
    "--no-install-recommends",
    "fio",
    "libnbd-bin",
    "libvirt-clients",
    "libxml2-utils",
    "qemu-system-x86",
    "qemu-utils",
];

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} not runnable ({e}): this test needs apt (Debian)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A dpkg status database: its stanzas in order.
#[derive(Clone)]
struct Status {
    stanzas: Vec<String>,
}

fn field<'a>(stanza: &'a str, name: &str) -> Option<&'a str> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn package(stanza: &str) -> &str {
    field(stanza, "Package").unwrap_or("")
}

/// The package a dependency names (`libc6 (>= 2.34)`, `python3:any`).
fn dep_name(dep: &str) -> &str {
    dep.trim().split([' ', ':', '(']).next().unwrap_or("")
}

impl Status {
    fn parse(text: &str) -> Status {
        let stanzas = text
            .split("\n\n")
            .map(|s| s.trim_matches('\n').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        Status { stanzas }
    }

    /// This machine's.
    fn system() -> Status {
        Status::parse(&std::fs::read_to_string("/var/lib/dpkg/status").expect("dpkg status"))
    }

    fn stanza(&self, pkg: &str) -> Option<&str> {
        self.stanzas
            .iter()
            .map(String::as_str)
            .find(|s| package(s) == pkg)
    }

    /// The installed version of `pkg`, if it is installed.
    fn installed(&self, pkg: &str) -> Option<&str> {
        self.stanza(pkg)
            .filter(|s| field(s, "Status") == Some("install ok installed"))
            .and_then(|s| field(s, "Version"))
    }

    fn without(&self, drop: impl Fn(&str) -> bool) -> Status {
        Status {
            stanzas: self.stanzas.iter().filter(|s| !drop(s)).cloned().collect(),
        }
    }

    /// With `stanza` in place of any stanza of the same package. `Depends` entries naming
    /// packages that are not installed here are left out (libraries the base state may
    /// lack; the check is about the QEMU packages' relations).
    fn with(&self, stanza: &str) -> Status {
        let pkg = package(stanza).to_string();
        let mut s = self.without(|s| package(s) == pkg);
        let have = s.provided();
        let fixed: Vec<String> = stanza
            .lines()
            .map(|l| match l.strip_prefix("Depends: ") {
                Some(deps) => {
                    let kept: Vec<&str> = deps
                        .split(", ")
                        .filter(|d| d.split(" | ").any(|alt| have.contains(dep_name(alt))))
                        .collect();
                    format!("Depends: {}", kept.join(", "))
                }
                None => l.to_string(),
            })
            .filter(|l| l != "Depends: ")
            .collect();
        drop(have);
        s.stanzas.push(fixed.join("\n"));
        s
    }

    /// The names installed packages are or provide (versions not compared).
    fn provided(&self) -> HashSet<&str> {
        let mut names = HashSet::new();
        for s in &self.stanzas {
            if field(s, "Status") == Some("install ok installed") {
                names.insert(package(s));
                if let Some(p) = field(s, "Provides") {
                    names.extend(p.split(", ").map(dep_name));
                }
            }
        }
        names
    }

    /// Without the installed packages whose dependencies are no longer there (repeatedly):
    /// as if what was removed had never been installed.
    fn pruned(mut self) -> Status {
        loop {
            let have = self.provided();
            let broken: HashSet<String> = self
                .stanzas
                .iter()
                .filter(|s| field(s, "Status") == Some("install ok installed"))
                .filter(|s| {
                    ["Depends", "Pre-Depends"].iter().any(|f| {
                        field(s, f).is_some_and(|deps| {
                            deps.split(", ").any(|clause| {
                                !clause.split(" | ").any(|alt| have.contains(dep_name(alt)))
                            })
                        })
                    })
                })
                .map(|s| package(s).to_string())
                .collect();
            if broken.is_empty() {
                return self;
            }
            self = self.without(|s| broken.contains(package(s)));
        }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let mut text = self.stanzas.join("\n\n");
        text.push('\n');
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Bare Debian 12: this machine without QEMU and without the NBD and libvirt tools.
fn bare() -> Status {
    Status::system()
        .without(|s| {
            let p = package(s);
            p.starts_with("qemu-")
                || field(s, "Source").is_some_and(|src| src == "qemu" || src.starts_with("qemu "))
                || TOOL_PACKAGES.contains(&p)
        })
        .pruned()
}

/// The machine image: bare plus the backported qemu-utils.
fn image() -> Status {
    bare().with(BACKPORT_QEMU_UTILS)
}

/// qemu-system-x86's candidate version, which the plans must pin QEMU to.
fn candidate() -> String {
    let (ok, text) = run(Command::new("apt-cache").args(["policy", "qemu-system-x86"]));
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: "))
        .filter(|v| ok && *v != "(none)")
        .unwrap_or_else(|| {
            panic!("apt knows no qemu-system-x86: run `apt-get update` once\n{text}")
        });
    v.to_string()
}

/// One starting state written out, with the checks run against it.
struct State {
    name: &'static str,
    status: Status,
    file: PathBuf,
    _dir: TempDir,
}

impl State {
    /// A starting state; `apt-get check` says it is consistent (nothing installed lacks a
    /// dependency).
    fn new(name: &'static str, status: Status) -> State {
        let st = State::unchecked(name, status);
        let (ok, text) = st.apt(&["check"]);
        assert!(ok, "{name}: the constructed state is broken:\n{text}");
        st
    }

    /// A state apt produced itself (after a simulated install it accepted).
    fn unchecked(name: &'static str, status: Status) -> State {
        let dir = tandem_qemu::scratch::tempdir().unwrap();
        // Readable by anyone: the non-root check runs the script as `nobody`.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let file = status.write(dir.path(), "status");
        State {
            name,
            status,
            file,
            _dir: dir,
        }
    }

    fn apt(&self, args: &[&str]) -> (bool, String) {
        let (ok, text) = run(Command::new("apt-get")
            .arg("-o")
            .arg(format!("Dir::State::status={}", self.file.display()))
            .args(args));
        let refused =
            text.contains("broken packages") || text.lines().any(|l| l.starts_with("E: "));
        (ok && !refused, text)
    }

    /// What `scripts/deps` would give `apt-get install` here.
    fn plan(&self) -> Vec<String> {
        let (ok, text) = run(Command::new("bash")
            .arg(workspace_root().join("scripts/deps"))
            .env("TANDEM_DEPS_PLAN", "1")
            .env("TANDEM_DEPS_STATUS", &self.file));
        assert!(ok, "{}: scripts/deps failed to plan:\n{text}", self.name);
        text.split_whitespace().map(str::to_string).collect()
    }

    /// `apt-get install -s ARGS` from this state.
    fn simulate(&self, args: &[String]) -> (bool, String) {
        let mut all = vec!["install", "-s"];
        all.extend(args.iter().map(String::as_str));
        self.apt(&all)
    }

    /// The plan, simulated: apt accepts it; returns the simulation's output.
    fn plan_accepted(&self, plan: &[String]) -> String {
        let (ok, text) = self.simulate(plan);
        assert!(
            ok,
            "{}: apt-get install -s {} was refused:\n{text}",
            self.name,
            plan.join(" ")
        );
        text
    }

    /// The state after the simulated install `sim` (its `Inst`/`Remv` lines), with each
    /// installed package's stanza taken from apt's lists.
    fn after(&self, sim: &str) -> Status {
        let mut inst: Vec<(String, String)> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        for line in sim.lines() {
            if let Some(rest) = line.strip_prefix("Inst ") {
                let name = rest.split(' ').next().unwrap().to_string();
                let ver = rest
                    .split('(')
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .unwrap_or_else(|| panic!("unparsed: {line}"));
                inst.push((name, ver.to_string()));
            } else if let Some(rest) = line.strip_prefix("Remv ") {
                removed.push(rest.split(' ').next().unwrap().to_string());
            }
        }
        assert!(!inst.is_empty(), "{}: nothing installed:\n{sim}", self.name);
        let wanted: Vec<String> = inst.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let (ok, text) = run(Command::new("apt-cache").arg("show").args(&wanted));
        assert!(ok, "apt-cache show {wanted:?}:\n{text}");
        let mut found: HashMap<(String, String), String> = HashMap::new();
        for s in Status::parse(&text).stanzas {
            let key = (
                package(&s).to_string(),
                field(&s, "Version").unwrap_or("").to_string(),
            );
            found.entry(key).or_insert(s);
        }
        let names: Vec<&str> = inst.iter().map(|(n, _)| n.as_str()).collect();
        let mut st = self.status.without(|s| {
            let p = package(s);
            names.contains(&p) || removed.iter().any(|r| r == p)
        });
        for (n, v) in &inst {
            let s = found
                .get(&(n.clone(), v.clone()))
                .unwrap_or_else(|| panic!("apt-cache show has no {n} {v}"));
            let mut lines: Vec<&str> = s.lines().collect();
            lines.insert(1, "Status: install ok installed");
            st.stanzas.push(lines.join("\n"));
        }
        st
    }
}

fn has(plan: &[String], arg: &str) -> bool {
    plan.iter().any(|a| a == arg)
}

/// The QEMU packages of a plan, pinned to `v`.
fn assert_qemu_pinned(name: &str, plan: &[String], v: &str) {
    for p in ["qemu-system-x86", "qemu-utils"] {
        assert!(
            has(plan, &format!("{p}={v}")),
            "{name}: {p} not pinned to {v}: {plan:?}"
        );
    }
}

/// The simulated install leaves QEMU 7.2 (`v`) in place, qemu-utils included.
fn assert_installs_qemu(name: &str, sim: &str, v: &str) {
    for p in ["qemu-system-x86", "qemu-utils", "qemu-system-common"] {
        assert!(
            sim.lines()
                .any(|l| l.starts_with(&format!("Inst {p} ")) && l.contains(&format!("({v} "))),
            "{name}: no {p} {v} installed:\n{sim}"
        );
    }
    assert!(
        !sim.contains("\nRemv qemu-"),
        "{name}: removes QEMU:\n{sim}"
    );
}

/// After the plan's install `scripts/deps` has nothing to do: it exits 0 at once, saying
/// nothing (as any user: it does not get as far as the root check).
fn assert_done_after(name: &str, after: Status) {
    let done = State::unchecked("after the install", after);
    let (ok, text) = run(Command::new("bash")
        .arg(workspace_root().join("scripts/deps"))
        .env("TANDEM_DEPS_STATUS", &done.file));
    assert!(ok && text.is_empty(), "{name}: after the install: {text}");
}

/// The image's plan and its simulation, computed once for the tests that start there.
struct ImageRun {
    plan: Vec<String>,
    sim: String,
    /// What apt says the install leaves.
    after: Status,
}

fn image_run() -> &'static ImageRun {
    static RUN: OnceLock<ImageRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let st = State::new("image", image());
        let plan = st.plan();
        let sim = st.plan_accepted(&plan);
        let after = st.after(&sim);
        ImageRun { plan, sim, after }
    })
}

/// The machine image of this project's kind: the old command line fails exactly as it did
/// on a fresh machine; the plan (a downgrade of qemu-utils to 7.2) is accepted, and it is
/// refused without --allow-downgrades (so the flag is needed, not decoration).
#[test]
fn image_with_backported_qemu_utils() {
    let v = candidate();
    let st = State::new("image", image());
    assert_eq!(st.status.installed("qemu-utils"), Some(BACKPORT));

    let naive: Vec<String> = NAIVE.iter().map(|s| s.to_string()).collect();
    let (ok, text) = st.simulate(&naive);
    assert!(
        !ok && text.contains("held broken packages") && text.contains("Breaks: qemu-system-common"),
        "the simulated image does not reproduce the fresh-machine failure:\n{text}"
    );

    let ImageRun { plan, sim, after } = image_run();
    assert_qemu_pinned(st.name, plan, &v);
    assert!(has(plan, "--allow-downgrades"), "{plan:?}");
    for p in TOOL_PACKAGES {
        assert!(has(plan, p), "{p} missing from {plan:?}");
    }
    assert_installs_qemu(st.name, sim, &v);
    assert!(
        sim.contains(&format!("Inst qemu-utils [{BACKPORT}] ({v} ")),
        "qemu-utils is downgraded to {v}:\n{sim}"
    );

    let without: Vec<String> = plan
        .iter()
        .filter(|a| *a != "--allow-downgrades")
        .cloned()
        .collect();
    let (ok, text) = st.simulate(&without);
    assert!(
        !ok && text.contains("--allow-downgrades"),
        "expected a refusal without --allow-downgrades:\n{text}"
    );

    // QEMU 7.2 fully installed: nothing to do.
    assert_eq!(after.installed("qemu-system-x86"), Some(v.as_str()));
    assert_eq!(after.installed("qemu-utils"), Some(v.as_str()));
    assert_done_after(st.name, after.clone());
}

/// Bare Debian 12: QEMU 7.2 and the tools are installed, nothing downgraded.
#[test]
fn bare_debian() {
    let v = candidate();
    let st = State::new("bare Debian 12", bare());
    assert_eq!(st.status.installed("qemu-utils"), None);
    assert_eq!(st.status.installed("qemu-system-x86"), None);
    let plan = st.plan();
    assert_qemu_pinned(st.name, &plan, &v);
    assert!(!has(&plan, "--allow-downgrades"), "{plan:?}");
    let sim = st.plan_accepted(&plan);
    assert_installs_qemu(st.name, &sim, &v);
    assert_done_after(st.name, st.after(&sim));
}

/// The image with the backport's qemu-block-extra too: it is pinned down with qemu-utils
/// (it depends on qemu-utils of its own version).
#[test]
fn image_with_backported_block_extra() {
    let v = candidate();
    let st = State::new(
        "image + qemu-block-extra",
        image().with(BACKPORT_BLOCK_EXTRA),
    );
    let plan = st.plan();
    assert_qemu_pinned(st.name, &plan, &v);
    assert!(has(&plan, &format!("qemu-block-extra={v}")), "{plan:?}");
    assert!(has(&plan, "--allow-downgrades"), "{plan:?}");
    let sim = st.plan_accepted(&plan);
    assert_installs_qemu(st.name, &sim, &v);
    assert_done_after(st.name, st.after(&sim));
}

/// QEMU 7.2 installed (what the image's install leaves) but the NBD tools missing: only
/// they are installed. QEMU there but qemu-utils removed: it comes back at
/// qemu-system-x86's version.
#[test]
fn partial_states() {
    let v = candidate();
    let installed = &image_run().after;

    let st = State::new(
        "QEMU 7.2, no libnbd-bin/fio",
        installed.without(|s| ["libnbd-bin", "fio"].contains(&package(s))),
    );
    assert_eq!(st.status.installed("qemu-system-x86"), Some(v.as_str()));
    let plan = st.plan();
    assert_eq!(
        plan,
        ["-y", "--no-install-recommends", "fio", "libnbd-bin"],
        "only the tools"
    );
    let sim = st.plan_accepted(&plan);
    assert!(
        !sim.lines()
            .any(|l| l.starts_with("Inst qemu-") || l.starts_with("Remv qemu-")),
        "QEMU left alone:\n{sim}"
    );
    assert_done_after(st.name, st.after(&sim));

    let st = State::new(
        "QEMU 7.2, no qemu-utils",
        installed.without(|s| package(s) == "qemu-utils"),
    );
    let plan = st.plan();
    assert_qemu_pinned(st.name, &plan, &v);
    assert!(!has(&plan, "--allow-downgrades"), "{plan:?}");
    let sim = st.plan_accepted(&plan);
    assert!(sim.contains(&format!("Inst qemu-utils ({v} ")), "{sim}");
    assert_done_after(st.name, st.after(&sim));
}

/// QEMU 7.2 of an older build than the candidate (a machine installed before the last
/// point release): nothing to do while every command is there; with qemu-utils gone, all of
/// QEMU, qemu-system-common included, moves to the candidate together (no downgrade).
#[test]
fn older_qemu_build_installed() {
    let v = candidate();
    let (_, madison) = run(Command::new("apt-cache").args(["madison", "qemu-system-x86"]));
    let older = madison
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(str::trim))
        .find(|o| *o != v);
    let Some(older) = older else {
        // A property of the archive (one build of QEMU in the lists), not of the script.
        eprintln!("no build of qemu-system-x86 but {v} in apt's lists: state not constructible");
        return;
    };
    let bare = State::new("bare Debian 12", bare());
    let args: Vec<String> = [
        "-y".to_string(),
        "--no-install-recommends".to_string(),
        format!("qemu-system-x86={older}"),
        format!("qemu-system-common={older}"),
        format!("qemu-utils={older}"),
    ]
    .into();
    let old = bare.after(&bare.plan_accepted(&args));
    assert_eq!(old.installed("qemu-system-common"), Some(older));

    let st = State::unchecked("QEMU 7.2 older build", old.clone());
    let plan = st.plan();
    assert!(
        plan.iter().all(|a| !a.starts_with("qemu")),
        "QEMU is not touched while its commands are there: {plan:?}"
    );

    let st = State::new(
        "QEMU 7.2 older build, no qemu-utils",
        old.without(|s| package(s) == "qemu-utils"),
    );
    let plan = st.plan();
    assert_qemu_pinned(st.name, &plan, &v);
    assert!(has(&plan, &format!("qemu-system-common={v}")), "{plan:?}");
    assert!(!has(&plan, "--allow-downgrades"), "{plan:?}");
    let sim = st.plan_accepted(&plan);
    assert_installs_qemu(st.name, &sim, &v);
    assert_done_after(st.name, st.after(&sim));
}

/// As another user the script installs nothing: it prints the exact command (the plan
/// behind `sudo apt-get install`) and fails.
#[test]
fn non_root_prints_the_command() {
    let st = State::unchecked("image", image());
    let plan = image_run().plan.join(" ");
    let script = workspace_root().join("scripts/deps");
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let mut cmd = if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        Command::new("bash")
    };
    let (ok, text) = run(cmd.arg(&script).env("TANDEM_DEPS_STATUS", &st.file));
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!(
            "install them with: sudo apt-get update && sudo apt-get install {plan}\n"
        )),
        "{text}"
    );
}

/// Whether the simulated install `sim` installs `pkg`.
fn installs(sim: &str, pkg: &str) -> bool {
    sim.lines()
        .any(|l| l.strip_prefix("Inst ").and_then(|r| r.split(' ').next()) == Some(pkg))
}

/// The cluster packages come without an init system: from the image (which has systemd) and
/// from the image without systemd (a container), nothing of systemd is installed; with
/// recommends, libvirt-daemon-system and systemd-sysv would come.
#[test]
fn cluster_packages_pull_in_no_init_system() {
    let ImageRun { plan, sim, .. } = image_run();
    for p in CLUSTER_PACKAGES {
        assert!(has(plan, p), "{p} missing from {plan:?}");
    }
    assert!(has(plan, "--no-install-recommends"), "{plan:?}");
    for p in INIT_PACKAGES {
        assert!(!installs(sim, p), "image: the plan installs {p}:\n{sim}");
    }

    let st = State::new(
        "image without systemd",
        image()
            .without(|s| package(s).starts_with("systemd"))
            .pruned(),
    );
    assert_eq!(st.status.installed("systemd-sysv"), None);
    let plan = st.plan();
    let sim = st.plan_accepted(&plan);
    for p in CLUSTER_PACKAGES.iter().chain(["qemu-system-x86"].iter()) {
        assert!(installs(&sim, p), "{}: {p} not installed:\n{sim}", st.name);
    }
    for p in INIT_PACKAGES {
        assert!(
            !installs(&sim, p),
            "{}: the plan installs {p}:\n{sim}",
            st.name
        );
    }
    assert_done_after(st.name, st.after(&sim));

    // The flag matters: with recommends, the init system comes along.
    let with: Vec<String> = plan
        .iter()
        .filter(|a| *a != "--no-install-recommends")
        .cloned()
        .collect();
    let (ok, text) = st.simulate(&with);
    assert!(
        ok && installs(&text, "systemd-sysv"),
        "expected systemd-sysv with recommends:\n{text}"
    );
}
