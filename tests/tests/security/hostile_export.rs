//! A hostile guest: the agent is replaced by a script that writes crafted
//! export streams from inside a real VM. Every one must be rejected with the
//! reason in the log, leaving nothing in quarantine, while the daemon keeps
//! running and the next honest job still works.

use airlock_e2e as common;

use airlock::quarantine::craft::{entry, stream};
use airlock::quarantine::sha256_nix32 as hash;
use airlock::store::nar::build::{nar, Node};
use common::*;

const A: &str = "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-evil";
const B: &str = "/nix/store/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-other";
/// A's hash part with another name: both would be `<hash>.narinfo`.
const A_TWIN: &str = "/nix/store/ihml9cgha2ncb1jfpf857yd6nls4n23b-twin";

/// Pretends to be airlock-agent (after `standin_agent`'s prelude); writes
/// a pre-made export chosen by the attr.
const HOSTILE_AGENT: &str = r#"
printf 'E {"agent_started":{"version":1}}\n' > "$ch"
printf '\033[2J this is not the agent protocol\n' > "$ch"
attr=$(grep -o '"evil-[a-z-]*"' "$in/job.json" | head -1 | tr -d '"')
if [ "$attr" = evil-flood ]; then
  # Events and junk without end: host memory, disk and queues must hold.
  while :; do
    printf 'E {"built":{"status":"success"}}\nE {"agent_started":{"version":1}}\nE {"exported":{"paths":1,"bytes":1}}\n\033]52;c;eA==\a junk\n'
  done > "$ch"
fi
printf 'L hostile agent writes %s\n' "$attr" > "$ch"
# The PR's files: whole tree (src/) or its delta over a base image (delta/).
{ cat "$in/delta/evil/$attr.bin" 2>/dev/null || cat "$in/src/evil/$attr.bin"; } > "$ex"
sync
"#;

/// An entry in the `..` name, which the NAR writer lets through.
fn dotdot_nar() -> Vec<u8> {
    nar(&Node::Dir(vec![(
        "..",
        Node::File {
            exec: false,
            data: b"pwned",
        },
    )]))
}

#[test]
fn tampered_exports_are_rejected() {
    if !prerequisites("tampered_exports_are_rejected") {
        return;
    }
    let good = nar(&Node::File {
        exec: false,
        data: b"honest bytes",
    });
    let mut lying = entry(A, &good, &[]);
    lying.nar_hash = hash(b"what the guest claims");
    // A content address that smuggles narinfo lines (which release would
    // have signed): refused by the strict CA grammar.
    let mut injecting = entry(A, &good, &[]);
    injecting.ca = Some(format!(
        "fixed:r:{}\nNarHash: {}\nURL: nar/other.nar",
        hash(b"x"),
        hash(b"y")
    ));
    // A well-formed content address that is false: release would sign it,
    // and Nix would take the path for content-addressed.
    let mut false_ca = entry(A, &good, &[]);
    false_ca.ca = Some(format!(
        "fixed:r:sha256:{}",
        hash(b"some other tree").trim_start_matches("sha256:")
    ));
    // An honest export that is simply bigger than the quarantine's quota
    // (1 MiB in this daemon's config).
    let big_data = vec![b'x'; 3 << 19];
    let big = nar(&Node::File {
        exec: false,
        data: &big_data,
    });
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "evil-dotdot",
            stream(vec![(entry(A, &dotdot_nar(), &[]), dotdot_nar())]),
            "\"..\" is not allowed",
        ),
        (
            "evil-hash",
            stream(vec![(lying, good.clone())]),
            "does not match the claimed",
        ),
        (
            "evil-outside",
            stream(vec![(entry("/etc/cron.d/evil", &good, &[]), good.clone())]),
            "is not under /nix/store",
        ),
        (
            "evil-ca",
            stream(vec![(injecting, good.clone())]),
            "claims an invalid content address",
        ),
        (
            "evil-false-ca",
            stream(vec![(false_ca, good.clone())]),
            "false content address",
        ),
        (
            "evil-ref",
            stream(vec![(entry(A, &good, &[B]), good.clone())]),
            "not part of this job's export",
        ),
        (
            "evil-twins",
            stream(vec![
                (entry(A, &good, &[]), good.clone()),
                (entry(A_TWIN, &good, &[]), good.clone()),
            ]),
            "twice (or another path with its hash)",
        ),
        (
            "evil-quota",
            stream(vec![(entry(A, &big, &[]), big.clone())]),
            "limits.max_quarantine_bytes",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("hostile-agent");
    std::fs::write(&agent, standin_agent(HOSTILE_AGENT)).unwrap();
    let d = Daemon::builder()
        .with(|c| {
            c.vm.agent = agent.clone();
            c.limits.max_log_bytes = 4 << 20;
            c.limits.max_quarantine_bytes = 1 << 20;
        })
        .start();
    let extra: Vec<(String, Vec<u8>)> = cases
        .iter()
        .map(|(n, b, _)| (format!("evil/{n}.bin"), b.clone()))
        .collect();
    let extra_ref: Vec<(&str, Vec<u8>)> =
        extra.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (repo, head) = fixture_repo(d.dir.path(), &extra_ref);
    let ids: Vec<String> = cases
        .iter()
        .map(|(attr, _, _)| d.submit(&repo, &head, &[attr]))
        .collect();
    for ((attr, _, reason), id) in cases.iter().zip(&ids) {
        let rec = d.wait(id, 600);
        let st = status(&rec);
        assert!(st.contains("export rejected"), "{attr}: status {st}");
        let err = rec["result"]["export_error"].as_str().unwrap_or_default();
        assert!(
            err.contains(reason),
            "{attr}: reason {err:?} lacks {reason:?}"
        );
        assert!(rec["result"]["quarantine"].is_null());
        let log = d.build_log(id);
        assert!(
            log.contains("export rejected, nothing quarantined"),
            "{attr}: {log}"
        );
        assert!(
            log.contains("this is not the agent protocol"),
            "garbage is kept as log text"
        );
        // airlockctl shows it without letting the escape reach the terminal.
        assert!(!log.contains('\x1b'), "raw ESC on the terminal: {log:?}");
        assert!(log.contains("\\x1b[2J this is not"), "{log:?}");
    }
    // A guest that floods its channel: killed at limits.max_log_bytes, the
    // job fails with the reason, and the host kept only bounded state.
    let id = d.submit(&repo, &head, &["evil-flood"]);
    let rec = d.wait(&id, 600);
    let st = status(&rec);
    assert!(st.contains("limits.max_log_bytes"), "flood: status {st}");
    let timings = rec["timings"].as_array().map(Vec::len).unwrap_or(0);
    assert!(timings <= 16, "flood: {timings} timing marks kept");
    let log_len = std::fs::metadata(d.state().join("jobs").join(&id).join("build.log"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(log_len <= 8 << 20, "flood: build.log is {log_len} bytes");
    assert!(d.log().contains("guest output over the limit"));
    let warned = d
        .log()
        .lines()
        .filter(|l| l.contains(&id) && l.contains("unexpected line on the agent channel"))
        .count();
    assert!(warned <= 5, "garbage warnings are rate-limited: {warned}");
    let q = d.state().join("quarantine");
    let left: Vec<_> = std::fs::read_dir(&q)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "quarantine must stay empty: {left:?}");
    assert!(d.log().contains("export rejected; nothing quarantined"));
}
