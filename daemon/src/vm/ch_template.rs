//! Guest templates on cloud-hypervisor (issue 29): the same template guest
//! as QEMU's ([`super::template`]: the guest root mounted, the job's slots
//! holding placeholders the guest's disk driver has let go, the agent
//! waiting in template mode), saved with cloud-hypervisor's own API and
//! restored per job with the job's files.
//!
//! - **Save**: `vm.pause`, then `vm.snapshot` to `<template>/snapshot`
//!   (`config.json`, `state.json`, `memory-ranges`), then the VMM is shut
//!   down. The files are copied to new read-only files of airlockd's in
//!   `<template>/saved` and the written ones removed (the VMM may run as
//!   `vm.user`, which must read the template but never write it).
//! - **Restore**: a clone's snapshot directory (beside its API socket)
//!   holds a rewritten `config.json` (the job's disk files in the five
//!   slots, its console log, its Landlock rules), a copy of `state.json`
//!   and a link to the template's `memory-ranges`; `vm.restore` with
//!   `resume: true` and `memory_restore_mode` `OnDemand` where the VMM may
//!   use userfaultfd (root, or `vm.unprivileged_userfaultfd = 1`), else
//!   `Copy`. cloud-hypervisor reads the memory file; nothing writes it.
//! - **The go record**: cloud-hypervisor v53 has no virtio-serial port, so
//!   the agent's control port is the virtio console (`/dev/hvc0`, its
//!   channel too) in `Tty` mode: the VMM's stdin is a pseudo-terminal
//!   airlockd holds (v53 reads console input only from a terminal), its
//!   stdout the VM's channel log. The guest finds its port through
//!   `airlock.ctl=hvc0` on the template's command line.
//! - **Disks keep the template's size**: a restored virtio-blk device
//!   keeps the size and read-only flag it had when saved, whatever file
//!   it is given. So the size of every slot is part of the template's key
//!   ([`Slot`]): a writable slot (`/nix`, export) is the job's own size
//!   (the same for every job: `vm.nix_disk_mib`, `vm.export_disk_mib`), a
//!   read-only one (input, base) [`READONLY_CAPACITY`], to which the job's
//!   file is grown (sparse) before the restore. A slot the job does not
//!   use gets an empty file of its own, of the slot's size.
//! - **Randomness**: v53 has no VM generation ID device (upstream's is not
//!   released), so what separates two clones' RNGs is the go record's
//!   seed, which the agent mixes in and reseeds from before it does
//!   anything else (`RNDADDENTROPY`, `RNDRESEEDCRNG`).
//! - **What boots cold** (the reason in the log): a VM with a NIC (the
//!   fetch phase: a restored NIC would keep the template's TAP), one that
//!   shares directories, a probe, a disk that is not one of the job's
//!   slots or is larger than its slot.
//!
//! Not run here: this machine has no cloud-hypervisor binary (no package
//! registry has it) and its nested KVM boots no Linux guest under it. The
//! request bodies are checked against the v53 OpenAPI document and the
//! config rewrite against the shape the API's `VmConfig` has; the
//! end-to-end test is in the optional group
//! (`cloud_hypervisor_restored_vms_share_nothing`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::ch_api::LandlockConfig;
use super::template::{Error, Result, Saved};
use super::VmSpec;
use airlock_wire::disk;

/// The size a read-only slot has in a template (input, base). The job's
/// file is grown to it (sparse: no blocks) before the restore.
pub const READONLY_CAPACITY: u64 = 64 << 30;

/// One of the five disk slots as a template's device has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub serial: &'static str,
    pub bytes: u64,
    pub readonly: bool,
}

/// Whether the slot `serial` is read-only in every job.
fn readonly_slot(serial: &str) -> bool {
    serial != disk::NIX && serial != disk::EXPORT
}

fn file_len(p: &Path) -> std::result::Result<u64, String> {
    std::fs::metadata(p)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// The five slots of `spec`'s template, or why `spec` boots cold.
pub fn slots(spec: &VmSpec) -> std::result::Result<Vec<Slot>, String> {
    disk::ALL
        .iter()
        .map(|&serial| {
            let readonly = readonly_slot(serial);
            let d = spec.disks.iter().find(|d| d.serial == serial);
            let bytes = match d {
                Some(d) if d.readonly != readonly => {
                    return Err(format!(
                        "its {serial} disk is {} (a template's is not)",
                        if d.readonly { "read-only" } else { "writable" }
                    ))
                }
                Some(d) if serial == disk::ROOT || !readonly => file_len(&d.path)?,
                Some(d) => {
                    let len = file_len(&d.path)?;
                    if len > READONLY_CAPACITY {
                        return Err(format!(
                            "its {serial} disk ({len} bytes) is larger than a template's slot"
                        ));
                    }
                    READONLY_CAPACITY
                }
                None if readonly => READONLY_CAPACITY,
                None => 0,
            };
            Ok(Slot {
                serial,
                bytes,
                readonly,
            })
        })
        .collect()
}

/// The slots as part of a template's key.
pub fn slots_key(slots: &[Slot]) -> String {
    slots
        .iter()
        .map(|s| {
            format!(
                "{}={}{}",
                s.serial,
                s.bytes,
                if s.readonly { "r" } else { "w" }
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A saved cloud-hypervisor guest.
#[derive(Debug)]
pub struct ChTemplate {
    pub key: String,
    /// `config.json`, `state.json`, `memory-ranges` (airlockd's, read-only).
    pub snapshot: PathBuf,
    pub slots: Vec<Slot>,
    pub state_bytes: u64,
}

impl Saved for ChTemplate {
    fn state_bytes(&self) -> u64 {
        self.state_bytes
    }
}

/// The files a snapshot directory holds.
pub const CONFIG: &str = "config.json";
pub const STATE: &str = "state.json";
pub const MEMORY: &str = "memory-ranges";

/// `vm.snapshot`'s body (schema `VmSnapshotConfig`).
#[derive(Debug, Serialize)]
pub struct SnapshotBody {
    pub destination_url: String,
}

/// `vm.restore`'s body (schema `RestoreConfig`).
#[derive(Debug, Serialize)]
pub struct RestoreBody {
    pub source_url: String,
    pub prefault: bool,
    pub memory_restore_mode: &'static str,
    pub resume: bool,
}

/// A `file://` URL of a directory.
pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// How a clone's memory is restored: `OnDemand` (userfaultfd: pages read
/// from the memory file as the guest touches them) where the VMM may use
/// userfaultfd, else `Copy` (the whole file read at restore).
pub fn memory_restore_mode(vmm_uid: u32, unprivileged_userfaultfd: Option<&str>) -> &'static str {
    if vmm_uid == 0 || unprivileged_userfaultfd.map(str::trim) == Some("1") {
        "OnDemand"
    } else {
        "Copy"
    }
}

/// The restore body for a clone whose snapshot directory is `dir`.
pub fn restore_body(dir: &Path, vmm_uid: u32) -> RestoreBody {
    let uffd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").ok();
    RestoreBody {
        source_url: file_url(dir),
        prefault: false,
        memory_restore_mode: memory_restore_mode(vmm_uid, uffd.as_deref()),
        resume: true,
    }
}

/// One disk of a clone, in slot order: the file and whether it is opened
/// read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneDisk {
    pub path: PathBuf,
    pub readonly: bool,
}

fn bad(why: impl Into<String>) -> Error {
    Error::Guest(format!(
        "snapshot's {CONFIG} {} (not cloud-hypervisor v53's shape?)",
        why.into()
    ))
}

/// A clone's `config.json`: the template's `config`, with `disks` (slot
/// order: the template's devices are `disk0`..`disk4`) as the disks'
/// files, the serial port to `console_log`, the virtio console on the
/// VMM's terminal, and Landlock on with these rules (`Some`) or off, as
/// the backend is now (not as it was when the template was saved).
/// Everything else is the template's, unknown fields included.
pub fn clone_config(
    config: &[u8],
    disks: &[CloneDisk],
    console_log: &Path,
    landlock: Option<&[LandlockConfig]>,
) -> Result<Vec<u8>> {
    let mut v: Value =
        serde_json::from_slice(config).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let o = v.as_object_mut().ok_or_else(|| bad("is not an object"))?;
    let slots = o
        .get_mut("disks")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("has no disks"))?;
    for (i, d) in disks.iter().enumerate() {
        let id = format!("disk{i}");
        let slot = slots
            .iter_mut()
            .find(|s| s.get("id").and_then(Value::as_str) == Some(id.as_str()))
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad(format!("has no disk {id}")))?;
        slot.insert("path".into(), d.path.display().to_string().into());
        slot.insert("readonly".into(), d.readonly.into());
    }
    let serial = o
        .get_mut("serial")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("has no serial port"))?;
    serial.insert("mode".into(), "File".into());
    serial.insert("file".into(), console_log.display().to_string().into());
    let console = o
        .get_mut("console")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| bad("has no console"))?;
    console.insert("mode".into(), "Tty".into());
    console.remove("file");
    match landlock {
        Some(rules) => {
            o.insert("landlock_enable".into(), true.into());
            o.insert(
                "landlock_rules".into(),
                serde_json::to_value(rules).expect("serialises"),
            );
        }
        None => {
            o.insert("landlock_enable".into(), false.into());
            o.remove("landlock_rules");
        }
    }
    Ok(serde_json::to_vec_pretty(&v).expect("serialises"))
}

/// Make a clone's snapshot directory `dir` from template `t`.
pub fn write_clone_dir(
    t: &ChTemplate,
    dir: &Path,
    disks: &[CloneDisk],
    console_log: &Path,
    landlock: Option<&[LandlockConfig]>,
) -> Result<()> {
    let io = |what: String| move |source| Error::Io { what, source };
    let config = std::fs::read(t.snapshot.join(CONFIG))
        .map_err(io(format!("read the template's {CONFIG}")))?;
    let config = clone_config(&config, disks, console_log, landlock)?;
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::write(dir.join(CONFIG), config).map_err(io(format!("write the clone's {CONFIG}")))?;
    std::fs::copy(t.snapshot.join(STATE), dir.join(STATE))
        .map_err(io(format!("copy the template's {STATE}")))?;
    std::os::unix::fs::symlink(t.snapshot.join(MEMORY), dir.join(MEMORY))
        .map_err(io(format!("link the template's {MEMORY}")))?;
    Ok(())
}

/// The clone's disks in slot order: the job's file where it uses the
/// slot (a read-only one grown to the slot's size: sparse, no blocks; a
/// base image is a hard link to the shared cache's, which so grows once,
/// and the cache counts blocks, not sizes), else an empty file
/// of the slot's size in `scratch`, the clone's own, opened as the
/// template's device is (a restored device keeps its read-only flag; a
/// writable device on a read-only file fails the restore's disk lock).
pub fn clone_disks(spec: &VmSpec, slots: &[Slot], scratch: &Path) -> Result<Vec<CloneDisk>> {
    let io = |what: String| move |source| Error::Io { what, source };
    slots
        .iter()
        .map(|s| match spec.disks.iter().find(|d| d.serial == s.serial) {
            Some(d) => {
                let len = file_len(&d.path).map_err(Error::Guest)?;
                if d.readonly != s.readonly || len > s.bytes || (!s.readonly && len != s.bytes) {
                    return Err(Error::Guest(format!(
                        "the job's {} disk ({len} bytes) does not fit its template slot",
                        s.serial
                    )));
                }
                if len < s.bytes {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&d.path)
                        .and_then(|f| f.set_len(s.bytes))
                        .map_err(io(format!("grow {} to its slot", d.path.display())))?;
                }
                Ok(CloneDisk {
                    path: d.path.clone(),
                    readonly: d.readonly,
                })
            }
            None => {
                let p = scratch.join(format!("unused-{}.img", s.serial));
                std::fs::File::create(&p)
                    .and_then(|f| f.set_len(s.bytes))
                    .map_err(io(format!("create {}", p.display())))?;
                Ok(CloneDisk {
                    path: p,
                    readonly: s.readonly,
                })
            }
        })
        .collect()
}

/// The Landlock rules of a clone: what it reads and writes.
pub fn clone_landlock(
    spec: &VmSpec,
    initrd: &Path,
    disks: &[CloneDisk],
    clone_dir: &Path,
    t: &ChTemplate,
) -> Vec<LandlockConfig> {
    let rule = |p: &Path, access: &str| LandlockConfig {
        path: p.display().to_string(),
        access: access.into(),
    };
    let mut rules = vec![
        rule(&spec.kernel, "r"),
        rule(initrd, "r"),
        rule(clone_dir, "r"),
        rule(&t.snapshot, "r"),
        rule(&spec.console_log, "rw"),
    ];
    rules.extend(
        disks
            .iter()
            .map(|d| rule(&d.path, if d.readonly { "r" } else { "rw" })),
    );
    rules
}

/// The spec of a template VM of `shape` with `slots`, its files in `dir`:
/// the guest root and a placeholder file (sparse) of each slot's size.
pub fn template_spec(
    shape: &super::template::Shape,
    slots: &[Slot],
    key: &str,
    dir: &Path,
) -> Result<VmSpec> {
    let mut spec = super::template::template_spec(shape, key, dir);
    spec.cmdline = format!("{} airlock.template=1 airlock.ctl=hvc0", shape.cmdline);
    spec.pidfile = dir.join("vm.pid");
    spec.disks.clear();
    for s in slots {
        let path = if s.serial == disk::ROOT {
            shape.root.clone()
        } else {
            let p = dir.join(format!("placeholder-{}.img", s.serial));
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(s.bytes))
                .map_err(|source| Error::Io {
                    what: format!("create {}", p.display()),
                    source,
                })?;
            p
        };
        spec.disks.push(super::Disk {
            path,
            serial: s.serial.into(),
            readonly: s.readonly,
        });
    }
    Ok(spec)
}

/// Keep what the template VMM wrote to `written` as the template: each
/// file copied to a new file in `saved` (airlockd's, mode 0444, in a
/// directory of mode 0555), then `written` removed. New files, not a
/// change of owner: a process of the VMM's user that opened one of the
/// written files while the template was saved keeps its descriptor, and
/// with it a way to write the memory every later VM restores. Returns the
/// size of the saved device state.
pub fn keep_saved(written: &Path, saved: &Path) -> Result<u64> {
    use std::os::unix::fs::PermissionsExt;
    let io = |what: String| move |source| Error::Io { what, source };
    let _ = std::fs::remove_dir_all(saved);
    std::fs::create_dir(saved).map_err(io(format!("create {}", saved.display())))?;
    let mut state_bytes = 0;
    for name in [CONFIG, STATE, MEMORY] {
        let from = written.join(name);
        let m = std::fs::symlink_metadata(&from).map_err(io(format!("the snapshot's {name}")))?;
        if !m.is_file() {
            return Err(Error::Guest(format!("the snapshot's {name} is not a file")));
        }
        let to = saved.join(name);
        std::fs::copy(&from, &to).map_err(io(format!("keep the snapshot's {name}")))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o444))
            .map_err(io(format!("chmod {name}")))?;
        if name == STATE {
            state_bytes = m.len();
        }
    }
    std::fs::set_permissions(saved, std::fs::Permissions::from_mode(0o555))
        .map_err(io("chmod the saved template".into()))?;
    std::fs::remove_dir_all(written).map_err(io("remove the written snapshot".into()))?;
    Ok(state_bytes)
}

/// A pseudo-terminal for the VMM's stdin: (airlockd's side, the VMM's).
/// Both ends close on exec (no other process airlockd starts, another
/// VM's VMM among them, may inherit a VM's console) and raw: no echo, no
/// line editing, bytes as written.
pub fn console_pty() -> Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    use nix::sys::termios;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: nix::Error| Error::Io {
            what,
            source: e.into(),
        }
    };
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("open a pseudo-terminal for the VM's console"))?;
    nix::pty::grantpt(&master).map_err(err("grant the console's terminal"))?;
    nix::pty::unlockpt(&master).map_err(err("unlock the console's terminal"))?;
    let name = nix::pty::ptsname_r(&master).map_err(err("name the console's terminal"))?;
    // std opens with O_CLOEXEC.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .map_err(|source| Error::Io {
            what: format!("open {name}"),
            source,
        })?;
    let mut t = termios::tcgetattr(&slave).map_err(err("read the console terminal's modes"))?;
    termios::cfmakeraw(&mut t);
    termios::tcsetattr(&slave, termios::SetArg::TCSANOW, &t)
        .map_err(err("make the console terminal raw"))?;
    let master = OwnedFd::from(master);
    Ok((master, OwnedFd::from(slave)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::{ch_api, Disk};

    fn spec(dir: &Path) -> VmSpec {
        let f = |name: &str, mib: u64| {
            let p = dir.join(name);
            std::fs::File::create(&p)
                .unwrap()
                .set_len(mib << 20)
                .unwrap();
            p
        };
        VmSpec {
            name: "airlock-job-x-build".into(),
            kernel: f("vmlinux", 1),
            initrd: f("initrd.gz", 1),
            cmdline: "console=ttyS0 airlock.phase=build".into(),
            memory_mib: 512,
            vcpus: 1,
            disks: vec![
                Disk {
                    path: f("root.img", 300),
                    serial: disk::ROOT.into(),
                    readonly: true,
                },
                Disk {
                    path: f("nix.img", 64),
                    serial: disk::NIX.into(),
                    readonly: false,
                },
                Disk {
                    path: f("input.img", 3),
                    serial: disk::INPUT.into(),
                    readonly: true,
                },
                Disk {
                    path: f("export.img", 16),
                    serial: disk::EXPORT.into(),
                    readonly: false,
                },
            ],
            console_log: dir.join("console.log"),
            channel_log: dir.join("channel.log"),
            pidfile: dir.join("vm.pid"),
            tap: None,
            shares: vec![],
            adopt: Default::default(),
        }
    }

    #[test]
    fn slots_keep_writable_sizes_and_give_read_only_ones_room() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path());
        let slots = slots(&s).unwrap();
        let sizes: Vec<(&str, u64, bool)> = slots
            .iter()
            .map(|s| (s.serial, s.bytes, s.readonly))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (disk::ROOT, 300 << 20, true),
                (disk::NIX, 64 << 20, false),
                (disk::INPUT, READONLY_CAPACITY, true),
                (disk::EXPORT, 16 << 20, false),
                (disk::BASE, READONLY_CAPACITY, true),
            ]
        );
        assert!(slots_key(&slots).contains("airlock-nix=67108864w"));
        // A writable input disk is not a template's.
        let mut w = s.clone();
        w.disks[2].readonly = false;
        assert!(super::slots(&w).unwrap_err().contains("writable"));
    }

    #[test]
    fn a_clone_gets_the_jobs_files_and_empty_read_only_ones_for_unused_slots() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(d.path());
        let slots = slots(&s).unwrap();
        let scratch = d.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let disks = clone_disks(&s, &slots, &scratch).unwrap();
        assert_eq!(disks.len(), 5);
        assert_eq!(disks[2].path, s.disks[2].path);
        // The input disk grew (sparse) to its slot; the base slot is empty.
        assert_eq!(file_len(&s.disks[2].path).unwrap(), READONLY_CAPACITY);
        assert_eq!(disks[4].path, scratch.join("unused-airlock-base.img"));
        assert!(disks[4].readonly);
        // An unused writable slot is writable: the device was saved so.
        let mut no_export = s.clone();
        no_export.disks.retain(|d| d.serial != disk::EXPORT);
        let disks = clone_disks(&no_export, &slots, &scratch).unwrap();
        assert_eq!(disks[3].path, scratch.join("unused-airlock-export.img"));
        assert!(!disks[3].readonly);
        assert_eq!(file_len(&disks[3].path).unwrap(), 16 << 20);
        // A /nix disk of another size does not fit.
        let mut other = s.clone();
        std::fs::File::create(&other.disks[1].path)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        other.name = "other".into();
        let e = clone_disks(&other, &slots, &scratch).unwrap_err();
        assert!(e.to_string().contains("airlock-nix"), "{e}");
    }

    /// A template's config.json as the API's VmConfig has it (ch_api's own
    /// body), with a field of the VMM's that airlock does not know.
    fn template_config(dir: &Path) -> Vec<u8> {
        let s = spec(dir);
        let shape = super::super::template::Shape::of(&s, Path::new("/agent")).unwrap();
        let slots = slots(&s).unwrap();
        let t = template_spec(&shape, &slots, "k", dir).unwrap();
        let mut v = serde_json::to_value(ch_api::vm_config(&t, &[], true)).unwrap();
        v["platform"] = serde_json::json!({"num_pci_segments": 1});
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn the_clone_config_swaps_files_and_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let config = template_config(d.path());
        let disks: Vec<CloneDisk> = (0..5)
            .map(|i| CloneDisk {
                path: PathBuf::from(format!("/jobs/j/disk{i}.img")),
                readonly: i != 1 && i != 3,
            })
            .collect();
        let rules = vec![LandlockConfig {
            path: "/jobs/j".into(),
            access: "rw".into(),
        }];
        let out = clone_config(
            &config,
            &disks,
            Path::new("/jobs/j/console.log"),
            Some(&rules),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let before: Value = serde_json::from_slice(&config).unwrap();
        for i in 0..5 {
            let disk = &v["disks"][i];
            assert_eq!(disk["path"], format!("/jobs/j/disk{i}.img"));
            assert_eq!(disk["serial"], before["disks"][i]["serial"]);
        }
        assert_eq!(v["serial"]["file"], "/jobs/j/console.log");
        assert_eq!(v["console"]["mode"], "Tty");
        assert!(v["console"].get("file").is_none());
        assert_eq!(v["landlock_rules"][0]["path"], "/jobs/j");
        assert_eq!(v["landlock_enable"], true);
        // Landlock off now: off in the clone, whatever the template had.
        let off = clone_config(&config, &disks, Path::new("/c"), None).unwrap();
        let off: Value = serde_json::from_slice(&off).unwrap();
        assert_eq!(off["landlock_enable"], false);
        assert!(off.get("landlock_rules").is_none());
        assert_eq!(v["platform"], before["platform"]);
        assert_eq!(v["payload"], before["payload"]);
        assert_eq!(v["memory"], before["memory"]);
        // The template's command line says where the control port is.
        assert!(v["payload"]["cmdline"]
            .as_str()
            .unwrap()
            .ends_with("airlock.template=1 airlock.ctl=hvc0"));
    }

    #[test]
    fn a_config_of_another_shape_is_refused_with_a_reason() {
        let disks = vec![CloneDisk {
            path: "/x".into(),
            readonly: true,
        }];
        for (bad, why) in [
            (&b"not json"[..], "is not JSON"),
            (b"[]", "is not an object"),
            (b"{}", "has no disks"),
            (br#"{"disks":[{"id":"other"}]}"#, "has no disk disk0"),
            (br#"{"disks":[{"id":"disk0"}]}"#, "has no serial port"),
            (
                br#"{"disks":[{"id":"disk0"}],"serial":{"mode":"File"}}"#,
                "has no console",
            ),
        ] {
            let e = clone_config(bad, &disks, Path::new("/c"), None).unwrap_err();
            assert!(e.to_string().contains(why), "{e} for {why}");
        }
    }

    #[test]
    fn on_demand_restore_only_where_the_vmm_may_use_userfaultfd() {
        assert_eq!(memory_restore_mode(0, Some("0\n")), "OnDemand");
        assert_eq!(memory_restore_mode(1000, Some("1\n")), "OnDemand");
        assert_eq!(memory_restore_mode(1000, Some("0\n")), "Copy");
        assert_eq!(memory_restore_mode(1000, None), "Copy");
    }

    #[test]
    fn the_saved_template_is_new_read_only_files_and_the_written_ones_go() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let (written, saved) = (d.path().join("snapshot"), d.path().join("saved"));
        std::fs::create_dir(&written).unwrap();
        for (name, bytes) in [(CONFIG, 2), (STATE, 7), (MEMORY, 4096)] {
            std::fs::write(written.join(name), vec![b'x'; bytes]).unwrap();
        }
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open(written.join(MEMORY))
            .unwrap();
        let old_ino = held.metadata().unwrap().ino();
        assert_eq!(keep_saved(&written, &saved).unwrap(), 7);
        assert!(!written.exists());
        let m = std::fs::metadata(saved.join(MEMORY)).unwrap();
        assert_ne!(
            m.ino(),
            old_ino,
            "a new file, not the one a descriptor holds"
        );
        assert_eq!(m.permissions().mode() & 0o777, 0o444);
        let dm = std::fs::metadata(&saved).unwrap();
        assert_eq!(dm.permissions().mode() & 0o777, 0o555);
        // A snapshot without its memory is not a template.
        std::fs::create_dir(&written).unwrap();
        std::fs::write(written.join(CONFIG), "{}").unwrap();
        let e = keep_saved(&written, &d.path().join("saved2")).unwrap_err();
        assert!(e.to_string().contains(STATE), "{e}");
    }

    #[test]
    fn the_console_pty_passes_bytes_unchanged() {
        use std::io::{Read, Write};
        let (master, slave) = console_pty().unwrap();
        for fd in [&master, &slave] {
            use std::os::fd::AsRawFd;
            #[allow(unsafe_code)]
            // SAFETY: F_GETFD on an fd we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(
                flags & libc::FD_CLOEXEC,
                libc::FD_CLOEXEC,
                "inherited by children"
            );
        }
        let mut m = std::fs::File::from(master);
        let mut s = std::fs::File::from(slave);
        m.write_all(b"AIRLOCK-GO 1 2 ab\n").unwrap();
        let mut buf = [0u8; 18];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"AIRLOCK-GO 1 2 ab\n");
    }
}
