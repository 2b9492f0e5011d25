//! Per-job TAP devices. Created with the TUN ioctl (the kernel does not
//! create tun/tap links over rtnetlink), then configured, listed and deleted
//! over rtnetlink.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use futures_lite::StreamExt;
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    #[error("cannot create TAP device {0}")]
    Create(String, #[source] std::io::Error),
    #[error("netlink request for {0} failed")]
    Netlink(String, #[source] rtnetlink::Error),
    #[error("link {0} not found")]
    NotFound(String),
    #[error("TAP name {0:?} is not a valid interface name")]
    BadName(String),
}
pub type Result<T> = std::result::Result<T, Error>;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(Error::BadName(name.to_owned()));
    }
    Ok(())
}

/// Open a queue of TAP device `name` (creating the device if it does not
/// exist), as a VMM does: frames the host sends out of the TAP are read
/// from the file, frames written to it arrive at the host.
pub fn attach(name: &str, nonblocking: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    check_name(name)?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(if nonblocking { libc::O_NONBLOCK } else { 0 })
        .open("/dev/net/tun")
        .map_err(Error::Open)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    #[allow(unsafe_code)]
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes, laid out
    // as IfReq) that lives for the whole call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(Error::Create(
            name.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

/// Create a persistent TAP device `name`, owned by root, or by `owner`
/// (uid, gid): then a VMM running as that user can attach to it without
/// `CAP_NET_ADMIN`.
pub fn create(name: &str, owner: Option<(u32, u32)>) -> Result<()> {
    let f = attach(name, false)?;
    let mut calls = vec![(TUNSETPERSIST, 1 as libc::c_ulong)];
    if let Some((uid, gid)) = owner {
        calls.push((TUNSETOWNER, uid as libc::c_ulong));
        calls.push((TUNSETGROUP, gid as libc::c_ulong));
    }
    for (req, arg) in calls {
        #[allow(unsafe_code)]
        // SAFETY: TUNSETPERSIST, TUNSETOWNER and TUNSETGROUP take an integer
        // by value.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg) };
        if rc < 0 {
            return Err(Error::Create(
                name.to_owned(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

async fn index(h: &Handle, name: &str) -> Result<Option<u32>> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(Error::Netlink(name.to_owned(), e)),
    }
}

/// Give the TAP the host's address of the job's /30 and bring it up.
pub async fn configure(h: &Handle, name: &str, host: Ipv4Addr, prefix_len: u8) -> Result<()> {
    let idx = index(h, name)
        .await?
        .ok_or_else(|| Error::NotFound(name.to_owned()))?;
    h.address()
        .add(idx, host.into(), prefix_len)
        .execute()
        .await
        .map_err(|e| Error::Netlink(name.to_owned(), e))?;
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(|e| Error::Netlink(name.to_owned(), e))
}

/// Delete the link (its address and connected route go with it).
pub async fn delete(h: &Handle, name: &str) -> Result<bool> {
    match index(h, name).await? {
        None => Ok(false),
        Some(idx) => h
            .link()
            .del(idx)
            .execute()
            .await
            .map(|_| true)
            .map_err(|e| Error::Netlink(name.to_owned(), e)),
    }
}

/// Names of all links starting with `prefix`.
pub async fn list(h: &Handle, prefix: &str) -> Result<Vec<String>> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut out = Vec::new();
    let mut links = h.link().get().execute();
    while let Some(l) = links
        .try_next()
        .await
        .map_err(|e| Error::Netlink(prefix.to_owned(), e))?
    {
        for a in &l.attributes {
            if let LinkAttribute::IfName(n) = a {
                if n.starts_with(prefix) {
                    out.push(n.clone());
                }
            }
        }
    }
    Ok(out)
}
