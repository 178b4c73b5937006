//! The OCF agent `ocf:tandem:nvlog` (`scripts/ocf/nvlog`) run directly, as Pacemaker's
//! executor runs it (`OCF_ROOT`, `OCF_RESKEY_*`, the action as its argument), against stand-ins
//! for what it drives: a fake `tandem` (whose `mirror receive|send` write status files the
//! test controls) and a fake `crm_attribute` (which keeps the cluster's attributes in files,
//! one CIB for both "hosts"). No cluster, no root: this checks the agent's decisions, the
//! promotion score rules above all, and its OCF return codes; `cluster_failover.rs` runs it
//! under the real Pacemaker.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_qemu::scratch::{tempdir, TempDir};
use tandem_tests::workspace_root;

const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_ERR_CONFIGURED: i32 = 6;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_PROMOTED: i32 = 8;

const SIZE: u64 = 1 << 20;

/// The fake `tandem`: records its arguments, makes the receiver's copy (zeroed, unless
/// `--keep`), and rewrites its status file every 100 ms until SIGTERM; the receiver says
/// `synced` once the file `$FAKE_CTL/synced` exists.
const FAKE_TANDEM: &str = r#"#!/bin/sh
echo "$*" >>"$FAKE_CTL/calls"
[ "$1" = mirror ] || exit 2
role=$2; shift 2
status=; copy=; size=; keep=
while [ $# -gt 0 ]; do
  case $1 in
    --status) status=$2; shift 2 ;;
    --copy) copy=$2; shift 2 ;;
    --size) size=${2%b}; shift 2 ;;
    --keep) keep=1; shift ;;
    *) shift ;;
  esac
done
if [ "$role" = receive ] && [ -z "$keep" ]; then
  rm -f "$copy"; dd if=/dev/zero of="$copy" bs=1 count=0 seek="$size" 2>/dev/null
fi
trap 'exit 0' TERM
while :; do
  if [ "$role" = receive ]; then
    s=false; [ -e "$FAKE_CTL/synced" ] && s=true
    printf '{"role":"receiver","guest":"A","connected":%s,"synced":%s,"committed":0}\n' $s $s >"$status.tmp"
  else
    printf '{"role":"sender","guest":"A","connected":true,"mirrored":0,"state":"up"}\n' >"$status.tmp"
  fi
  mv "$status.tmp" "$status"
  sleep 0.1
done
"#;

/// The fake `crm_attribute`: one file per attribute under `$FAKE_ATTRS`
/// (`TYPE-NODE-NAME`); `--promotion` is the node's promotion score.
const FAKE_CRM_ATTRIBUTE: &str = r#"#!/bin/sh
node=; name=; val=; op=get; type=nodes
while [ $# -gt 0 ]; do
  case $1 in
    -N|--node) node=$2; shift 2 ;;
    -n|--name) name=$2; shift 2 ;;
    -v|--update) val=$2; op=set; shift 2 ;;
    -D|--delete) op=del; shift ;;
    -G|--query) op=get; shift ;;
    -t|--type) type=$2; shift 2 ;;
    -l|--lifetime) shift 2 ;;
    --promotion) type=promotion; name=score; node=$OCF_RESKEY_CRM_meta_on_node; shift ;;
    *) shift ;;
  esac
done
f="$FAKE_ATTRS/$type-$node-$name"
case $op in
  set) echo "$val" >"$f" ;;
  del) rm -f "$f" ;;
  get) [ -e "$f" ] || exit 6; cat "$f" ;;
esac
"#;

/// The stand-ins and the shared "CIB".
struct World {
    dir: TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.path().join("attrs")).unwrap();
        for (name, text) in [
            ("tandem", FAKE_TANDEM),
            ("crm_attribute", FAKE_CRM_ATTRIBUTE),
        ] {
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        std::fs::write(
            dir.path().join("mirror.key"),
            format!("{}\n", "ab".repeat(32)),
        )
        .unwrap();
        World { dir }
    }

    fn attr(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("attrs").join(file))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn set_attr(&self, file: &str, value: &str) {
        std::fs::write(self.dir.path().join("attrs").join(file), value).unwrap();
    }
}

/// One "host" running the agent: its node name, run directory, NVRAM file, fake's controls.
struct AgentHost<'w> {
    world: &'w World,
    node: &'static str,
    root: PathBuf,
}

impl<'w> AgentHost<'w> {
    fn new(world: &'w World, node: &'static str) -> AgentHost<'w> {
        let root = world.dir.path().join(node);
        std::fs::create_dir_all(root.join("ctl")).unwrap();
        AgentHost { world, node, root }
    }

    fn shm(&self) -> PathBuf {
        self.root.join("tandem-nvlog-A")
    }

    fn rundir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Runs the agent's `action` with this host's parameters (`extra` overrides them).
    fn run(&self, action: &str, extra: &[(&str, &str)]) -> (i32, String) {
        let w = self.world.dir.path();
        let listen = if self.node == "host1" {
            "10.10.0.1:7790"
        } else {
            "10.10.0.2:7790"
        };
        let path = format!(
            "{}:{}",
            w.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("sh");
        c.arg(agent()).arg(action);
        c.env("PATH", path)
            .env("OCF_ROOT", "/usr/lib/ocf")
            .env("OCF_RESOURCE_INSTANCE", "nvlog-A-rsc")
            .env("OCF_RESKEY_CRM_meta_on_node", self.node)
            .env("FAKE_CTL", self.root.join("ctl"))
            .env("FAKE_ATTRS", w.join("attrs"));
        let params: Vec<(&str, String)> = vec![
            ("guest", "A".into()),
            ("shm", self.shm().display().to_string()),
            ("size", SIZE.to_string()),
            ("key", w.join("mirror.key").display().to_string()),
            ("peers", "host1=10.10.0.1:7790 host2=10.10.0.2:7790".into()),
            ("listen", listen.into()),
            ("policy", "degraded".into()),
            ("mode", "sync".into()),
            ("binary", w.join("bin/tandem").display().to_string()),
            ("rundir", self.rundir().display().to_string()),
        ];
        for (k, v) in &params {
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        for (k, v) in extra {
            c.env(format!("OCF_RESKEY_{k}"), v);
        }
        let out = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// Runs `action` and checks its return code.
    fn expect(&self, action: &str, rc: i32) -> String {
        let (got, text) = self.run(action, &[]);
        assert_eq!(
            got, rc,
            "{} {action}: rc {got}, wanted {rc}:\n{text}",
            self.node
        );
        text
    }

    fn score(&self) -> Option<String> {
        self.world.attr(&format!("promotion-{}-score", self.node))
    }

    fn pid(&self, role: &str) -> Option<u32> {
        std::fs::read_to_string(self.rundir().join(format!("nvlog-A.{role}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn running(&self, role: &str) -> bool {
        // A zombie has an empty command line.
        self.pid(role).is_some_and(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| !c.is_empty())
        })
    }

    /// The fake receiver reports `synced` from now on; waits until its status file says so.
    fn sync(&self) {
        std::fs::write(self.root.join("ctl/synced"), "").unwrap();
        let status = self.rundir().join("nvlog-A.recv.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&status).is_ok_and(|s| s.contains("\"synced\":true")) {
            assert!(Instant::now() < deadline, "the fake receiver never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn unsync(&self) {
        let _ = std::fs::remove_file(self.root.join("ctl/synced"));
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.root.join("ctl/calls")).unwrap_or_default()
    }
}

impl Drop for AgentHost<'_> {
    fn drop(&mut self) {
        let _ = self.run("stop", &[]);
    }
}

fn agent() -> PathBuf {
    workspace_root().join("scripts/ocf/nvlog")
}

#[test]
fn meta_data_declares_the_parameters_and_promotable_actions() {
    let w = World::new();
    let h = AgentHost::new(&w, "host1");
    let xml = h.expect("meta-data", OCF_SUCCESS);
    assert!(xml.contains("<version>1.1</version>"), "{xml}");
    for p in [
        "guest", "shm", "size", "key", "peers", "policy", "mode", "max_lag", "listen", "home",
    ] {
        assert!(
            xml.contains(&format!("<parameter name=\"{p}\"")),
            "{p}:\n{xml}"
        );
    }
    for a in [
        "start",
        "stop",
        "promote",
        "demote",
        "validate-all",
        "meta-data",
    ] {
        assert!(xml.contains(&format!("<action name=\"{a}\"")), "{a}");
    }
    assert!(xml.contains("role=\"Promoted\"") && xml.contains("role=\"Unpromoted\""));
    // Every parameter the generator writes is declared.
    for line in xml.lines().filter(|l| l.starts_with("<parameter ")) {
        assert!(
            line.contains("unique=") && line.contains("required="),
            "{line}"
        );
    }
}

#[test]
fn validate_all_refuses_bad_configuration() {
    let w = World::new();
    let h = AgentHost::new(&w, "host1");
    h.expect("validate-all", OCF_SUCCESS);
    for (k, v) in [
        ("size", "16M"),
        ("peers", "host1=10.10.0.1:7790"),
        ("peers", "host3=10.10.0.3:1 host2=10.10.0.2:7790"),
        ("policy", "maybe"),
        ("listen", ""),
    ] {
        let (rc, text) = h.run("validate-all", &[(k, v)]);
        assert_eq!(rc, OCF_ERR_CONFIGURED, "{k}={v}: {text}");
    }
    let bad_key = w.dir.path().join("bad.key");
    std::fs::write(&bad_key, "not hex\n").unwrap();
    let (rc, text) = h.run("validate-all", &[("key", bad_key.to_str().unwrap())]);
    assert_eq!(rc, OCF_ERR_CONFIGURED, "{text}");
    // Nothing runs yet.
    h.expect("monitor", OCF_NOT_RUNNING);
}

/// Bootstrap: the home host gets 10, the other nothing; promote on the home host makes an
/// empty log, records the primary, starts the sender to the other host.
#[test]
fn bootstrap_promotes_the_home_host_with_an_empty_log() {
    let w = World::new();
    let (h1, h2) = (AgentHost::new(&w, "host1"), AgentHost::new(&w, "host2"));
    h1.expect("start", OCF_SUCCESS);
    h2.expect("start", OCF_SUCCESS);
    assert!(h1.running("recv") && h2.running("recv"));
    assert_eq!(h1.score().as_deref(), Some("10"));
    assert_eq!(h2.score(), None, "not home, never synced: no score");
    h1.expect("monitor", OCF_SUCCESS);
    // host2 cannot be promoted: its copy is not synced.
    let text = h2.expect("promote", OCF_ERR_GENERIC);
    assert!(text.contains("refused"), "{text}");

    h1.expect("promote", OCF_SUCCESS);
    assert!(!h1.running("recv") && h1.running("send"));
    assert_eq!(std::fs::metadata(h1.shm()).unwrap().len(), SIZE);
    assert_eq!(
        w.attr("crm_config--tandem-nvlog-A-primary").as_deref(),
        Some("host1")
    );
    assert_eq!(h1.score().as_deref(), Some("100"));
    let calls = h1.calls();
    let recv = calls
        .lines()
        .find(|l| l.starts_with("mirror receive"))
        .unwrap();
    assert!(
        recv.contains(&format!("--size {SIZE}b")),
        "bytes, not MiB: {recv}"
    );
    let send = calls
        .lines()
        .find(|l| l.starts_with("mirror send"))
        .unwrap();
    assert!(send.contains("--peer 10.10.0.2:7790"), "{send}");
    assert!(
        send.contains("crm_attribute -N host2 -n tandem-nvlog-A-outdated -v 1"),
        "{send}"
    );
    h1.expect("monitor", OCF_RUNNING_PROMOTED);
    // Once promoted anywhere, the home rule is gone: a restarted home host gets nothing.
    h1.expect("demote", OCF_SUCCESS);
    assert!(h1.running("recv") && !h1.running("send"));
    assert_eq!(h1.score(), None);
    h1.expect("monitor", OCF_SUCCESS);
    assert_eq!(h1.score(), None);
}

/// A synced receiver scores 100 and promote keeps its copy byte for byte; stop ends it all.
#[test]
fn a_synced_copy_is_promoted_as_it_is() {
    let w = World::new();
    w.set_attr("crm_config--tandem-nvlog-A-primary", "host1");
    let h2 = AgentHost::new(&w, "host2");
    h2.expect("start", OCF_SUCCESS);
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score(), None);
    h2.sync();
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score().as_deref(), Some("100"));
    // The copy as the receiver left it (the fake wrote zeros; mark it).
    std::fs::write(h2.shm(), vec![0x5a; SIZE as usize]).unwrap();
    h2.expect("promote", OCF_SUCCESS);
    assert!(std::fs::read(h2.shm()).unwrap().iter().all(|&b| b == 0x5a));
    assert_eq!(
        w.attr("crm_config--tandem-nvlog-A-primary").as_deref(),
        Some("host2")
    );
    let send = h2.calls();
    assert!(send.contains("--peer 10.10.0.1:7790"), "{send}");
    h2.expect("monitor", OCF_RUNNING_PROMOTED);
    h2.expect("stop", OCF_SUCCESS);
    assert!(!h2.running("send") && !h2.running("recv"));
    assert_eq!(h2.score(), None);
    h2.expect("monitor", OCF_NOT_RUNNING);
}

/// An outdated mark: the receiver restarts once (empty copy), the score is 50 until that
/// receiver is synced, then the mark is cleared and the score is 100. Promote while marked
/// wipes the copy.
#[test]
fn an_outdated_copy_scores_50_and_is_wiped_on_promote() {
    let w = World::new();
    w.set_attr("crm_config--tandem-nvlog-A-primary", "host1");
    let h2 = AgentHost::new(&w, "host2");
    h2.expect("start", OCF_SUCCESS);
    h2.sync();
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score().as_deref(), Some("100"));

    // The peer's sender marks this copy outdated (its --outdate-cmd).
    w.set_attr("nodes-host2-tandem-nvlog-A-outdated", "1");
    h2.unsync();
    let before = h2.pid("recv").unwrap();
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score().as_deref(), Some("50"));
    let after = h2.pid("recv").unwrap();
    assert_ne!(before, after, "the receiver restarts with an empty copy");
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.pid("recv"), Some(after), "once only");
    assert_eq!(h2.score().as_deref(), Some("50"));

    // Promote while outdated: the copy is wiped.
    std::fs::write(h2.shm(), vec![0x5a; SIZE as usize]).unwrap();
    h2.expect("promote", OCF_SUCCESS);
    let copy = std::fs::read(h2.shm()).unwrap();
    assert_eq!(copy.len() as u64, SIZE);
    assert!(copy.iter().all(|&b| b == 0), "an outdated copy is wiped");
    assert_eq!(w.attr("nodes-host2-tandem-nvlog-A-outdated"), None);
    h2.expect("demote", OCF_SUCCESS);

    // Marked again, then the fresh receiver syncs: the mark goes, the score is 100.
    w.set_attr("nodes-host2-tandem-nvlog-A-outdated", "1");
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score().as_deref(), Some("50"));
    h2.sync();
    h2.expect("monitor", OCF_SUCCESS);
    assert_eq!(h2.score().as_deref(), Some("100"));
    assert_eq!(w.attr("nodes-host2-tandem-nvlog-A-outdated"), None);
}

/// A daemon that dies is a failure (not "not running"), so Pacemaker recovers it.
#[test]
fn a_dead_daemon_fails_the_monitor() {
    let w = World::new();
    let h1 = AgentHost::new(&w, "host1");
    h1.expect("start", OCF_SUCCESS);
    let pid = h1.pid("recv").unwrap();
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h1.running("recv") {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    h1.expect("monitor", OCF_ERR_GENERIC);
    h1.expect("stop", OCF_SUCCESS);
    h1.expect("monitor", OCF_NOT_RUNNING);
}
