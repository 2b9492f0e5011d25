//! The part of cloud-hypervisor's REST API (v53.0) that airlock uses: request
//! and response types, checked against the published OpenAPI document
//! (`../shared/specs/cloud-hypervisor-openapi.yaml`, or `AIRLOCK_CH_OPENAPI`;
//! read, never copied into this repository) by the tests below. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::VmSpec;

/// `PUT /vm.create` body (schema `VmConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmConfig {
    pub cpus: CpusConfig,
    pub memory: MemoryConfig,
    pub payload: PayloadConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    pub serial: ConsoleConfig,
    pub console: ConsoleConfig,
    /// Landlock the VMM to the files of this VM (`landlock_rules` plus what
    /// the config names).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub landlock_enable: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub landlock_rules: Vec<LandlockConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u32,
    pub max_vcpus: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    /// virtio-fs needs guest memory the vhost-user backend can map.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadConfig {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: String,
    pub readonly: bool,
    pub serial: String,
    pub id: String,
    /// airlock's images are raw; never let the VMM guess from the content
    /// (a guest-written image must not turn into a qcow2 with a backing file).
    pub image_type: ImageType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    FixedVhd,
    Qcow2,
    Raw,
    Vhdx,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// An existing TAP (made by airlock's network policy).
    pub tap: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsConfig {
    pub tag: String,
    /// The vhost-user socket of this share's virtiofsd.
    pub socket: String,
    pub num_queues: u32,
    pub queue_size: u32,
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// Schemas `ConsoleConfig` and `SerialConfig` (the same fields we use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LandlockConfig {
    pub path: String,
    /// `r` or `rw`.
    pub access: String,
}

/// Schema `VmState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

/// `GET /vm.info` (schema `VmInfo`; only what airlock reads).
#[derive(Debug, Clone, Deserialize)]
pub struct VmInfo {
    pub state: VmState,
    pub config: serde_json::Value,
    #[serde(default)]
    pub device_tree: Option<BTreeMap<String, serde_json::Value>>,
}

/// `GET /vmm.ping` (schema `VmmPingResponse`).
#[derive(Debug, Clone, Deserialize)]
pub struct VmmPing {
    pub version: String,
    #[serde(default)]
    pub pid: Option<i64>,
}

/// `GET /vm.counters`: device id → counter → value.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// One record of `--event-monitor` (not in the OpenAPI document; the
/// VMM's `event_monitor` module writes them as JSON objects, one after
/// another).
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub source: String,
    pub event: String,
}

/// A share of a host directory (virtio-fs) served by its own virtiofsd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    pub tag: String,
    pub socket: String,
}

/// The `vm.create` body for `spec`: the same VM QEMU gets (direct kernel
/// boot, virtio-blk disks with serials, the kernel console on the serial
/// port and the agent channel on the virtio console, both to files, one
/// TAP), with the VMM landlocked to exactly these files when `landlock`.
pub fn vm_config(spec: &VmSpec, fs: &[FsShare], landlock: bool) -> VmConfig {
    let s = |p: &std::path::Path| p.display().to_string();
    let disks: Vec<DiskConfig> = spec
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| DiskConfig {
            path: s(&d.path),
            readonly: d.readonly,
            serial: d.serial.clone(),
            id: format!("disk{i}"),
            image_type: ImageType::Raw,
        })
        .collect();
    let mut rules: Vec<LandlockConfig> = [&spec.kernel, &spec.initrd]
        .into_iter()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| LandlockConfig {
            path: s(p),
            access: "r".into(),
        })
        .collect();
    rules.extend(disks.iter().map(|d| LandlockConfig {
        path: d.path.clone(),
        access: if d.readonly { "r" } else { "rw" }.into(),
    }));
    for f in [&spec.console_log, &spec.channel_log] {
        rules.push(LandlockConfig {
            path: s(f),
            access: "rw".into(),
        });
    }
    rules.extend(fs.iter().map(|f| LandlockConfig {
        path: f.socket.clone(),
        access: "rw".into(),
    }));
    VmConfig {
        cpus: CpusConfig {
            boot_vcpus: spec.vcpus.max(1),
            max_vcpus: spec.vcpus.max(1),
        },
        memory: MemoryConfig {
            size: spec.memory_mib << 20,
            shared: !fs.is_empty(),
        },
        payload: PayloadConfig {
            kernel: s(&spec.kernel),
            initramfs: (!spec.initrd.as_os_str().is_empty()).then(|| s(&spec.initrd)),
            cmdline: spec.cmdline.clone(),
        },
        disks,
        net: spec
            .tap
            .iter()
            .map(|t| NetConfig {
                tap: t.clone(),
                id: "net0".into(),
            })
            .collect(),
        fs: fs
            .iter()
            .enumerate()
            .map(|(i, f)| FsConfig {
                tag: f.tag.clone(),
                socket: f.socket.clone(),
                num_queues: 1,
                queue_size: 1024,
                id: format!("fs{i}"),
            })
            .collect(),
        serial: ConsoleConfig {
            mode: ConsoleMode::File,
            file: Some(s(&spec.console_log)),
        },
        console: ConsoleConfig {
            mode: ConsoleMode::File,
            file: Some(s(&spec.channel_log)),
        },
        landlock_enable: landlock,
        landlock_rules: if landlock { rules } else { vec![] },
    }
}

/// An error body of the VMM: a JSON array of strings (the error and its
/// causes), or whatever it was, shortened.
pub fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<Vec<String>>(body) {
        Ok(v) if !v.is_empty() => v.join(": "),
        _ => {
            let t = String::from_utf8_lossy(body);
            let t = t.trim();
            if t.is_empty() {
                "(no body)".into()
            } else {
                t.chars().take(500).collect()
            }
        }
    }
}

/// Events in an `--event-monitor` file so far; a partly written last
/// record is left for the next read.
pub fn parse_events(bytes: &[u8]) -> Vec<Event> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Event>()
        .map_while(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Disk;
    use serde_json::Value;

    /// The published OpenAPI document: `AIRLOCK_CH_OPENAPI`, else the
    /// workplace's `../shared/specs/`. Missing, the schema tests say so
    /// loudly (`SKIPPED`, which `.ci/run` refuses) and, under
    /// `AIRLOCK_REQUIRE_E2E=1`, fail.
    fn spec(test: &str) -> Option<Value> {
        let path = std::env::var_os("AIRLOCK_CH_OPENAPI")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../shared/specs/cloud-hypervisor-openapi.yaml")
            });
        match std::fs::read_to_string(&path) {
            Ok(s) => Some(serde_yaml::from_str(&s).expect("the OpenAPI document parses")),
            Err(e) => {
                crate::testing::skipped(&format!(
                    "{test}: needs cloud-hypervisor's OpenAPI document at {} \
                     (set AIRLOCK_CH_OPENAPI): {e}",
                    path.display()
                ));
                None
            }
        }
    }

    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.strip_prefix("#/components/schemas/").expect("local ref");
                &doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// A JSON-schema check of the subset the document uses (types,
    /// required, enum, minimum, nested objects and arrays), stricter in one
    /// way: a property the schema does not name is an error, as it is for
    /// the VMM (its config types deny unknown fields).
    fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        let schema = resolve(doc, schema);
        if let Some(e) = schema.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                errs.push(format!("{at}: {v} not in {e:?}"));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let ok = match ty {
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("boolean") => v.is_boolean(),
            Some("number") => v.is_number(),
            _ => true,
        };
        if !ok {
            errs.push(format!("{at}: {v} is not {}", ty.unwrap_or("?")));
            return;
        }
        if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_i64), v.as_i64()) {
            if n < min {
                errs.push(format!("{at}: {n} < minimum {min}"));
            }
        }
        if let Some(obj) = v.as_object() {
            let props = schema.get("properties").and_then(Value::as_object);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    errs.push(format!("{at}: required {r} missing"));
                }
            }
            for (k, val) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(doc, s, val, &format!("{at}.{k}"), errs),
                    None => match schema.get("additionalProperties") {
                        Some(s) if s.is_object() => {
                            validate(doc, s, val, &format!("{at}.{k}"), errs)
                        }
                        _ => errs.push(format!("{at}: unknown property {k}")),
                    },
                }
            }
        }
        if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
            for (i, it) in arr.iter().enumerate() {
                validate(doc, items, it, &format!("{at}[{i}]"), errs);
            }
        }
    }

    fn check(doc: &Value, name: &str, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        validate(doc, &doc["components"]["schemas"][name], v, name, &mut errs);
        errs
    }

    fn job_spec() -> VmSpec {
        VmSpec {
            name: "airlock-j-fetch".into(),
            kernel: "/img/vmlinux".into(),
            initrd: "/img/initrd.gz".into(),
            cmdline: "console=ttyS0 airlock.phase=fetch".into(),
            memory_mib: 1024,
            vcpus: 2,
            disks: vec![
                Disk {
                    path: "/img/rootfs.img".into(),
                    serial: "airlock-root".into(),
                    readonly: true,
                },
                Disk {
                    path: "/jobs/j/nix.img".into(),
                    serial: "airlock-nix".into(),
                    readonly: false,
                },
            ],
            console_log: "/jobs/j/console.log".into(),
            channel_log: "/jobs/j/channel.log".into(),
            pidfile: "/jobs/j/vm.pid".into(),
            tap: Some("alk3".into()),
            shares: vec![],
            adopt: Default::default(),
        }
    }

    /// Every body the backend sends validates against the schema.
    #[test]
    fn every_request_body_validates_against_the_openapi_schema() {
        let Some(doc) = spec("every_request_body_validates_against_the_openapi_schema") else {
            return;
        };
        let s = job_spec();
        let fs = [FsShare {
            tag: "src".into(),
            socket: "/jobs/j/fs0.sock".into(),
        }];
        for (landlock, shares) in [(false, &fs[..0]), (true, &fs[..]), (true, &fs[..0])] {
            let body = serde_json::to_value(vm_config(&s, shares, landlock)).unwrap();
            let errs = check(&doc, "VmConfig", &body);
            assert!(errs.is_empty(), "{errs:#?}\n{body:#}");
        }
        let mut no_net = s.clone();
        no_net.tap = None;
        no_net.initrd = "".into();
        let body = serde_json::to_value(vm_config(&no_net, &[], false)).unwrap();
        assert!(body.get("net").is_none() && body["payload"].get("initramfs").is_none());
        assert!(check(&doc, "VmConfig", &body).is_empty());
    }

    /// A template's snapshot and a clone's restore (ch_template.rs), as
    /// sent, validate against `VmSnapshotConfig` and `RestoreConfig`; the
    /// clone's rewritten config against `VmConfig`.
    #[test]
    fn template_bodies_validate_against_the_openapi_schema() {
        use crate::vm::ch_template::{self, CloneDisk, SnapshotBody};
        let Some(doc) = spec("template_bodies_validate_against_the_openapi_schema") else {
            return;
        };
        let dir = std::path::Path::new("/var/lib/airlock/templates/k/snapshot");
        let snap = serde_json::to_value(SnapshotBody {
            destination_url: ch_template::file_url(dir),
        })
        .unwrap();
        assert!(check(&doc, "VmSnapshotConfig", &snap).is_empty());
        for uid in [0, 1000] {
            let body = serde_json::to_value(ch_template::restore_body(dir, uid)).unwrap();
            let errs = check(&doc, "RestoreConfig", &body);
            assert!(errs.is_empty(), "{errs:#?}\n{body:#}");
            assert_eq!(body["resume"], true);
        }
        let mut s = job_spec();
        s.tap = None;
        let config = serde_json::to_vec(&vm_config(&s, &[], true)).unwrap();
        let disks: Vec<CloneDisk> = s
            .disks
            .iter()
            .map(|d| CloneDisk {
                path: d.path.clone(),
                readonly: d.readonly,
            })
            .collect();
        let out = ch_template::clone_config(&config, &disks, &s.console_log, Some(&[])).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let errs = check(&doc, "VmConfig", &v);
        assert!(errs.is_empty(), "{errs:#?}\n{v:#}");
    }

    /// The validator is not a rubber stamp.
    #[test]
    fn the_schema_check_catches_wrong_bodies() {
        let Some(doc) = spec("the_schema_check_catches_wrong_bodies") else {
            return;
        };
        let good = serde_json::to_value(vm_config(&job_spec(), &[], true)).unwrap();
        let mut v = good.clone();
        v["serial"]["mode"] = "Files".into();
        assert!(!check(&doc, "VmConfig", &v).is_empty(), "enum");
        let mut v = good.clone();
        v["cpus"]["boot_vcpus"] = 0.into();
        assert!(!check(&doc, "VmConfig", &v).is_empty(), "minimum");
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove("payload");
        assert!(!check(&doc, "VmConfig", &v).is_empty(), "required");
        let mut v = good.clone();
        v["disks"][0]["serials"] = "x".into();
        assert!(!check(&doc, "VmConfig", &v).is_empty(), "unknown property");
        let mut v = good;
        v["memory"]["size"] = "1G".into();
        assert!(!check(&doc, "VmConfig", &v).is_empty(), "type");
    }

    /// Responses as the VMM sends them parse into our types and validate.
    #[test]
    fn responses_parse_and_validate() {
        let Some(doc) = spec("responses_parse_and_validate") else {
            return;
        };
        let info = serde_json::json!({
            "config": serde_json::to_value(vm_config(&job_spec(), &[], false)).unwrap(),
            "state": "Running",
            "memory_actual_size": 1073741824u64,
            "device_tree": {"_disk0": {"id": "_disk0", "resources": [], "children": [], "pci_bdf": "0000:00:02.0"}}
        });
        assert!(
            check(&doc, "VmInfo", &info).is_empty(),
            "{:?}",
            check(&doc, "VmInfo", &info)
        );
        let i: VmInfo = serde_json::from_value(info).unwrap();
        assert_eq!(i.state, VmState::Running);
        let counters = serde_json::json!({"net0": {"rx_bytes": 10, "tx_frames": 1}});
        assert!(check(&doc, "VmCounters", &counters).is_empty());
        let c: VmCounters = serde_json::from_value(counters).unwrap();
        assert_eq!(c["net0"]["rx_bytes"], 10);
        let ping = serde_json::json!({"build_version": "v53.0", "version": "53.0.0", "pid": 7, "features": ["kvm"]});
        assert!(check(&doc, "VmmPingResponse", &ping).is_empty());
        let p: VmmPing = serde_json::from_value(ping).unwrap();
        assert_eq!(p.pid, Some(7));
    }

    #[test]
    fn error_bodies_and_events_parse() {
        assert_eq!(
            error_text(br#"["Error creating VM", "Invalid disk path"]"#),
            "Error creating VM: Invalid disk path"
        );
        assert_eq!(error_text(b""), "(no body)");
        assert_eq!(error_text(b"oops"), "oops");
        let ev = b"{\n  \"timestamp\": {\"secs\": 0, \"nanos\": 1},\n  \"source\": \"vm\",\n  \"event\": \"booting\",\n  \"properties\": null\n}\n\n{\"timestamp\":{\"secs\":0,\"nanos\":2},\"source\":\"vm\",\"event\":\"booted\",\"properties\":null}\n{\"source\": \"vm\", \"ev";
        let e = parse_events(ev);
        assert_eq!(
            e.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["booting", "booted"]
        );
    }
}
