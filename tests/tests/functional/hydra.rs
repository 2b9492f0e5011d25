//! Joining Hydra's queue-runner (issue 31), against the test double in
//! `tests/src/hydra_runner.rs` (a real gRPC server answering as the
//! recorded runs show): the version check, the join, pings, steps and
//! aborts off the tunnel, and joining again after the tunnel drops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock::config::Config;
use airlock::hydra::client::Client;
use airlock::hydra::proto::{self, runner_request};
use airlock::hydra::session::{Session, Steps};
use airlock_e2e::hydra_runner::{
    own_step, recorded, recording, step_message, FakeRunner, RECORDED_STORE,
};

const MASTER: &str = "0.1.0-5f82f0f0";

#[derive(Default)]
struct Recorder {
    started: Mutex<Vec<(String, String)>>,
    aborted: Mutex<Vec<String>>,
    lost: Mutex<usize>,
}

impl Steps for Recorder {
    fn start(&self, step: proto::BuildMessage, machine_id: &str, _: &Client) {
        self.started
            .lock()
            .unwrap()
            .push((step.build_id, machine_id.to_owned()));
    }
    fn abort(&self, build_id: &str) {
        self.aborted.lock().unwrap().push(build_id.to_owned());
    }
    fn abort_all(&self) {
        *self.lost.lock().unwrap() += 1;
    }
    fn running(&self) -> usize {
        0
    }
}

fn config(port: u16) -> Arc<Config> {
    let mut c = Config {
        state_dir: std::env::temp_dir(),
        ..Config::default()
    };
    c.hydra.endpoint = format!("http://127.0.0.1:{port}");
    c.hydra.store_dir = RECORDED_STORE.into();
    c.hydra.ping_secs = 1;
    c.hydra.reconnect_max_secs = 2;
    Arc::new(c)
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `ours` has the recorded message's fields, with the recorded values
/// except where the value belongs to the run or the machine.
fn same_fields(ours: &serde_json::Value, rec: &serde_json::Value, own: &[&str], what: &str) {
    let (o, r) = (ours.as_object().unwrap(), rec.as_object().unwrap());
    let mut ok: Vec<&String> = o.keys().collect();
    ok.sort();
    let mut rk: Vec<&String> = r.keys().collect();
    rk.sort();
    assert_eq!(
        ok, rk,
        "{what}: the fields\nours {ours:#}\nrecorded {rec:#}"
    );
    for (k, v) in r {
        if !own.contains(&k.as_str()) {
            assert_eq!(&o[k], v, "{what}: field {k}");
        }
    }
}

#[test]
fn hydra_session_checks_joins_pings_takes_steps_and_rejoins() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runner = FakeRunner::new(MASTER);
    let port = runner.serve(&rt);
    let steps = Arc::new(Recorder::default());
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let session = Session::new(config(port), steps.clone());
    rt.spawn(async move { session.run(move || s2.load(Ordering::SeqCst)).await });

    wait_for("the join", 30, || runner.joined().len() == 1);
    let first = runner.joined()[0].clone();
    // What we sent matches the recorded builder's messages field by field
    // (the machine's own figures and the run's ids aside).
    let rec = recording("success.jsonl");
    let got = runner.received();
    assert_eq!(got[0].0, "CheckVersion");
    same_fields(
        &got[0].1,
        &rec[0]["json"],
        &["machineId", "hostname"],
        "VersionCheckRequest",
    );
    assert_eq!(got[1].0, "OpenTunnel");
    let join = &got[1].1["join"];
    same_fields(
        join,
        &rec[2]["json"]["join"],
        &[
            "machineId",
            "hostname",
            "cpuCount",
            "bogomips",
            "totalMem",
            "nixVersion",
        ],
        "JoinMessage",
    );
    assert_eq!(join["machineId"], first);

    // Pings with load, memory and free space, every ping_secs.
    wait_for("a ping", 10, || {
        runner.received().iter().any(|(_, m)| {
            m["ping"]["machineId"] == first
                && m["ping"]["storeFreePercent"].as_f64().unwrap_or(0.0) > 0.0
        })
    });

    // A step (the recorded BuildMessage) reaches the step runner; an abort
    // of it too.
    let build: proto::RunnerRequest = recorded(&rec, 6);
    let Some(runner_request::Message::Build(b)) = build.message else {
        panic!("seq 6 is a build")
    };
    assert!(runner.send(&first, runner_request::Message::Build(b.clone())));
    wait_for("the step", 10, || !steps.started.lock().unwrap().is_empty());
    assert_eq!(
        steps.started.lock().unwrap()[0],
        (b.build_id.clone(), first.clone())
    );
    assert!(runner.send(
        &first,
        runner_request::Message::Abort(proto::AbortMessage {
            build_id: b.build_id.clone()
        })
    ));
    wait_for("the abort", 10, || {
        !steps.aborted.lock().unwrap().is_empty()
    });

    // The tunnel drops: running steps are given up, and the builder joins
    // again under a new machine id.
    runner.drop_tunnel(&first);
    wait_for("the second join", 30, || runner.joined().len() == 2);
    let second = runner.joined()[1].clone();
    assert_ne!(first, second, "a fresh machine id");
    assert!(*steps.lost.lock().unwrap() >= 1);
    stop.store(true, Ordering::SeqCst);
}

#[test]
fn hydra_session_refuses_another_version_naming_both() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runner = FakeRunner::new("0.1.0-dffd1b61");
    let port = runner.serve(&rt);
    let session = Session::new(config(port), Arc::new(Recorder::default()));
    let e = rt
        .block_on(session.once(&uuid::Uuid::new_v4().to_string()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0.1.0-dffd1b61") && e.contains(MASTER), "{e}");
    assert!(
        runner.joined().is_empty(),
        "no join after a refused version"
    );
}

/// The recorded step of `file`, resolved for a builder whose store is
/// `/nix/store` (the base names stay, the recorded store dir in the
/// environment becomes `/nix/store`: the serve protocol takes an
/// input-addressed output path as given).
fn recorded_step(file: &str) -> airlock::hydra::step::Resolved {
    let rec = recording(file);
    let m: proto::RunnerRequest = recorded(&rec, 6);
    let Some(runner_request::Message::Build(b)) = m.message else {
        panic!("seq 6 is a build")
    };
    let mut r = airlock::hydra::step::resolve(&b, "/nix/store").unwrap();
    for (_, v) in &mut r.drv.env {
        if let Some(rest) = v.strip_prefix(RECORDED_STORE.as_bytes()) {
            *v = [b"/nix/store".as_slice(), rest].concat();
        }
    }
    r
}

/// `nix-store --serve --write` on a private chroot store, given the
/// step; its result and its stderr (the build log).
fn serve_build(
    store: &std::path::Path,
    r: &airlock::hydra::step::Resolved,
) -> (airlock_nix_formats::serve::BuildResult, String) {
    use airlock_nix_formats::serve;
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nix-store")
        .args(["--store", store.to_str().unwrap(), "--serve", "--write"])
        .args(airlock_e2e::HOST_NIX_OPTIONS)
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nix-store");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let v = serve::handshake(&mut stdin, &mut stdout).expect("handshake");
    serve::write_build_derivation(&mut stdin, v, &r.drv_path, &r.drv, &r.options).unwrap();
    let res = serve::read_build_result(&mut stdout, v).expect("a result");
    drop(stdin);
    let _ = child.wait();
    (res, log.join().unwrap())
}

#[test]
fn hydra_recorded_steps_build_with_real_nix_through_the_serve_protocol() {
    use sha2::Digest;
    let test = "hydra_recorded_steps_build_with_real_nix_through_the_serve_protocol";
    // The sandbox maps /bin/sh to /bin/busybox (sandbox-paths).
    let mut missing: Vec<String> = Vec::new();
    if !airlock_e2e::have("nix-store") {
        missing.push("nix-store".into());
    }
    if !std::path::Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox".into());
    }
    if !airlock_e2e::ready_or_skip(test, &missing) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    // The success recording's step: the output's NAR is the one the
    // recorded upload carried (its SHA-256 and size).
    let ok = recorded_step("success.jsonl");
    let (res, log) = serve_build(&store, &ok);
    assert!(res.status.is_success(), "{res:?}\n{log}");
    let out = &ok.drv.outputs[0].path;
    // The chroot store keeps the path's files under the store's root.
    let nar = std::process::Command::new("nix-store")
        .arg("--dump")
        .arg(store.join(out.trim_start_matches('/')))
        .env("XDG_CACHE_HOME", store.join("xdg-cache"))
        .output()
        .unwrap();
    assert!(
        nar.status.success(),
        "{}",
        String::from_utf8_lossy(&nar.stderr)
    );
    let rec = recording("success.jsonl");
    let up: proto::AddToStoreRequest = recorded(&rec, 19);
    let Some(proto::add_to_store_request::Content::Header(h)) = up.content else {
        panic!("seq 19 is a header")
    };
    let info = h.path_infos[0].info.clone().unwrap();
    assert_eq!(nar.stdout.len() as u64, info.nar_size);
    assert_eq!(
        sha2::Sha256::digest(&nar.stdout)[..],
        info.nar_hash.unwrap().digest[..],
        "the NAR Nix built is the recorded one"
    );
    // The failure recording's step fails as a build failure, with Nix's
    // reason.
    let bad = recorded_step("failure.jsonl");
    let (res, log) = serve_build(&store, &bad);
    let outcome = airlock::hydra::step::Outcome::from_nix(&res);
    assert_eq!(
        outcome.state(),
        proto::BuildResultState::BuildFailure,
        "{res:?}\n{log}"
    );
    assert!(
        outcome
            .message(&bad.drv_path)
            .unwrap()
            .contains("airlock-fail"),
        "{outcome:?}"
    );
}

/// The messages of one step, in the order the double received them.
fn step_messages(
    runner: &FakeRunner,
    build_id: &str,
    drv: &str,
) -> Vec<(String, serde_json::Value)> {
    runner
        .received()
        .into_iter()
        .filter(|(rpc, m)| {
            m["buildId"] == build_id
                || (rpc == "BuildLog" && (m["drv"]["path"] == drv || m.get("drv").is_none()))
                || rpc == "FetchRequisites"
                || rpc == "FetchPaths"
                || rpc == "HasPath"
                || rpc == "BuildResult"
        })
        .collect()
}

#[test]
fn hydra_steps_build_in_vms_upload_fail_abort_and_rejoin() {
    let test = "hydra_steps_build_in_vms_upload_fail_abort_and_rejoin";
    if !airlock_e2e::prerequisites(test) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runner = FakeRunner::new(MASTER);
    let port = runner.serve(&rt);
    // An input the runner holds: a file's NAR under a made-up base name.
    let input = "0c5b8vw40dy178xlpddw65q9gf1h2186-airlock-input";
    let input_nar = airlock::store::nar::build::nar(&airlock::store::nar::build::Node::File {
        exec: false,
        data: b"airlock input\n",
    });
    runner.hold(input, &input_nar);
    let keydir = tempfile::tempdir().unwrap();
    let (sk, _pk) = airlock_e2e::github::gen_key(keydir.path(), "airlock-cache-1");
    let mut d = airlock_e2e::Daemon::builder()
        .host_network()
        .with(|c| {
            c.vm.user = airlock_e2e::VM_USER.into();
            c.hydra.endpoint = format!("http://127.0.0.1:{port}");
            c.hydra.ping_secs = 2;
            c.hydra.reconnect_max_secs = 2;
        })
        .args(&[
            "--trust",
            "trusted",
            "--signing-key-file",
            sk.to_str().unwrap(),
        ])
        .start();
    d.wait_until("the join", 60, || runner.joined().len() == 1);
    let machine = runner.joined()[0].clone();
    let done = |id: &str| runner.state.lock().unwrap().completed.get(id).cloned();

    // 1. The recorded success step, built in a VM: what airlockd sends
    // matches the recorded builder's messages field by field, and the
    // uploaded NAR is the one the host verified (the recorded one too).
    let a = step_message("success.jsonl");
    let t0 = std::time::Instant::now();
    assert!(runner.send(&machine, runner_request::Message::Build(a.clone())));
    d.wait_until("step A completed", 300, || done(&a.build_id).is_some());
    let step_secs = t0.elapsed().as_secs_f64();
    let rec = recording("success.jsonl");
    let drv_a = a.drv.as_ref().unwrap().path.clone();
    let msgs = step_messages(&runner, &a.build_id, &drv_a);
    let rpcs: Vec<&str> = msgs.iter().map(|(r, _)| r.as_str()).collect();
    let pos = |r: &str| {
        rpcs.iter()
            .position(|x| *x == r)
            .unwrap_or_else(|| panic!("no {r} in {rpcs:?}"))
    };
    assert!(
        pos("FetchRequisites") < pos("BuildLog")
            && pos("BuildLog") < pos("BuildResult")
            && pos("BuildResult") < pos("CompleteBuild"),
        "the recorded order: {rpcs:?}"
    );
    let statuses: Vec<&serde_json::Value> = msgs
        .iter()
        .filter(|(r, _)| r == "BuildStepUpdate")
        .map(|(_, m)| &m["stepStatus"])
        .collect();
    assert_eq!(
        statuses,
        [
            "SeningInputs",
            "Building",
            "ReceivingOutputs",
            "PostProcessing"
        ]
    );
    // Every other request as recorded, field by field: the step updates
    // (ids aside), FetchRequisites (no inputs: empty), HasPath (the output).
    let ids = ["buildId", "machineId"];
    for (_, m) in msgs.iter().filter(|(r, _)| r == "BuildStepUpdate") {
        same_fields(
            m,
            &rec[6]["json"],
            &[&ids[..], &["stepStatus"]].concat(),
            "StepUpdate",
        );
    }
    let (_, fr) = msgs.iter().find(|(r, _)| r == "FetchRequisites").unwrap();
    assert_eq!(fr, &rec[8]["json"], "FetchRequisites");
    let (_, hp) = msgs.iter().find(|(r, _)| r == "HasPath").unwrap();
    assert_eq!(hp, &rec[16]["json"], "HasPath");
    let run = [
        "buildId",
        "machineId",
        "importTimeMs",
        "buildTimeMs",
        "uploadTimeMs",
    ];
    let (_, complete) = msgs.iter().find(|(r, _)| r == "CompleteBuild").unwrap();
    same_fields(
        complete,
        &rec[23]["json"],
        &run,
        "BuildResultInfo (success)",
    );
    assert_eq!(complete["buildId"], a.build_id.as_str());
    assert_eq!(complete["machineId"], machine.as_str());
    let (_, header) = msgs
        .iter()
        .find(|(r, m)| r == "BuildResult" && m.get("header").is_some())
        .unwrap();
    let ours = &header["header"]["pathInfos"][0];
    let recd = &rec[18]["json"]["header"]["pathInfos"][0];
    assert_eq!(ours["path"], recd["path"]);
    same_fields(
        &ours["info"],
        &recd["info"],
        &["storeDir"],
        "UnkeyedValidPathInfo",
    );
    assert_eq!(ours["info"]["storeDir"], "/nix/store");
    let (_, first_log) = msgs.iter().find(|(r, _)| r == "BuildLog").unwrap();
    assert_eq!(first_log["drv"]["path"], drv_a.as_str());
    let log = runner
        .state
        .lock()
        .unwrap()
        .logs
        .get(&drv_a)
        .cloned()
        .unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("airlock: step: building /nix/store/"), "{log}");
    let out_a = "m87k6m0xh73qrr1mgylp7n5nvdw93npl-airlock-hello2";
    let up = runner
        .state
        .lock()
        .unwrap()
        .uploaded
        .get(out_a)
        .cloned()
        .expect("uploaded");
    assert_eq!(up.nar.len(), 136);
    eprintln!("hydra: step A (no inputs) received → completed in {step_secs:.1} s");

    // 2. A step with an input: the closure comes from the runner
    // (FetchRequisites, FetchPaths), is checked on the host and imported
    // in the VM, which has no network.
    let b = own_step(
        "airlock-cat",
        "1c5b8vw40dy178xlpddw65q9gf1h2186",
        &format!("cat /nix/store/{input} > $out"),
        &[input],
    );
    assert!(runner.send(&machine, runner_request::Message::Build(b.clone())));
    d.wait_until("step B completed", 300, || done(&b.build_id).is_some());
    let cb = done(&b.build_id).unwrap();
    assert_eq!(
        cb.result_state,
        proto::BuildResultState::Success as i32,
        "{:?}",
        cb.error_msg
    );
    assert!(runner
        .received()
        .iter()
        .any(|(r, m)| r == "FetchPaths" && m["paths"][0]["path"] == input));
    let out_b = runner
        .state
        .lock()
        .unwrap()
        .uploaded
        .get("1c5b8vw40dy178xlpddw65q9gf1h2186-airlock-cat")
        .cloned()
        .expect("B's output uploaded");
    assert_eq!(out_b.nar, input_nar, "the output is the input's bytes");

    // 3. The recorded failing step: a build failure with Nix's reason and
    // its log; nothing uploaded.
    let f = step_message("failure.jsonl");
    assert!(runner.send(&machine, runner_request::Message::Build(f.clone())));
    d.wait_until("the failing step completed", 300, || {
        done(&f.build_id).is_some()
    });
    let cf = done(&f.build_id).unwrap();
    assert_eq!(
        cf.result_state,
        proto::BuildResultState::BuildFailure as i32
    );
    let frec = recording("failure.jsonl");
    let cf_json = serde_json::to_value(&cf).unwrap();
    let run_and_reason = [&run[..], &["errorMsg"]].concat();
    same_fields(
        &cf_json,
        &frec[14]["json"],
        &run_and_reason,
        "BuildResultInfo (failure)",
    );
    let msg = cf.error_msg.clone().unwrap_or_default();
    assert!(
        msg.contains("airlock-fail.drv") && msg.contains("exit code 1") && !msg.contains('\u{1b}'),
        "Nix's reason, without colour codes: {msg:?}"
    );
    let drv_f = f.drv.as_ref().unwrap().path.clone();
    assert!(
        runner.state.lock().unwrap().logs.contains_key(&drv_f),
        "the failure's log"
    );

    // 4. An abort stops the VM within seconds, and nothing is reported.
    let s = own_step(
        "airlock-sleep",
        "2c5b8vw40dy178xlpddw65q9gf1h2186",
        "echo sleeping; sleep 600",
        &[],
    );
    assert!(runner.send(&machine, runner_request::Message::Build(s.clone())));
    let drv_s = s.drv.as_ref().unwrap().path.clone();
    d.wait_until("the sleeping step's log", 300, || {
        runner
            .received()
            .iter()
            .any(|(r, m)| r == "BuildLog" && m["drv"]["path"] == drv_s.as_str())
            || d.jobs()
                .iter()
                .any(|j| j["state"] == "running" && j["hydra"]["build_id"] == s.build_id.as_str())
    });
    d.wait_until("the step's VM runs", 300, || {
        d.jobs()
            .iter()
            .any(|j| j["state"] == "running" && j["hydra"]["build_id"] == s.build_id.as_str())
    });
    std::thread::sleep(Duration::from_secs(2));
    let t_abort = Instant::now();
    assert!(runner.send(
        &machine,
        runner_request::Message::Abort(proto::AbortMessage {
            build_id: s.build_id.clone()
        })
    ));
    d.wait_until("the aborted step's job ends", 120, || {
        d.jobs()
            .iter()
            .any(|j| j["hydra"]["build_id"] == s.build_id.as_str() && j["state"] == "done")
    });
    let abort_secs = t_abort.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        done(&s.build_id).is_none(),
        "no CompleteBuild for an aborted step"
    );
    eprintln!("hydra: abort → VM stopped in {abort_secs:.1} s");

    // 5. The tunnel drops while a step runs: the step's VM is stopped
    // (the runner retries the step elsewhere) and airlockd joins again
    // under a new machine id.
    let l = own_step(
        "airlock-lost",
        "3c5b8vw40dy178xlpddw65q9gf1h2186",
        "echo lost; sleep 600",
        &[],
    );
    assert!(runner.send(&machine, runner_request::Message::Build(l.clone())));
    let running = |id: &str| {
        d.jobs()
            .iter()
            .any(|j| j["state"] == "running" && j["hydra"]["build_id"] == id)
    };
    d.wait_until("the lost step's VM runs", 300, || running(&l.build_id));
    runner.drop_tunnel(&machine);
    d.wait_until("the lost step's job ends", 120, || {
        d.jobs()
            .iter()
            .any(|j| j["hydra"]["build_id"] == l.build_id.as_str() && j["state"] == "done")
    });
    d.wait_until("the second join", 60, || runner.joined().len() == 2);
    assert_ne!(runner.joined()[1], machine);
    assert!(
        done(&l.build_id).is_none(),
        "nothing reported for a lost step"
    );
    let log = d.log();
    assert!(log.contains("queue-runner connection lost"), "{log}");
    d.terminate(30);
}
