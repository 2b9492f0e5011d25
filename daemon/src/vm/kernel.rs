//! Which kernel a job's VM boots: airlock's trimmed guest kernel while it
//! boots, else the guest image's own (`<vm.image_dir>/vmlinux`, Debian's
//! stock kernel in the Debian build).
//!
//! The trimmed kernel boots in half the time under TCG (BENCHMARKS.md) but
//! is built separately from the image; so it is preferred only when it is
//! there, and the first VM on it that never starts its agent makes every
//! later VM of this airlockd boot the image's kernel (and that VM is booted
//! again on it), with the reason in the log.
//!
//! `vm.kernel`: `"auto"` (the default) takes the Debian build's trimmed
//! kernel ([`TRIMMED`]) for the Debian build's guest image (an `image_dir`
//! under [`DEBIAN_IMAGES`], whose initramfs and root it is tested with),
//! and the image's own kernel for any other image; a path takes that
//! kernel for every image; `""` the image's own.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug)]
pub struct KernelChoice {
    stock: PathBuf,
    /// The trimmed kernel, while it is still trusted to boot.
    preferred: Mutex<Option<PathBuf>>,
}

/// Where vm-images/guest/build-kernel.sh leaves the trimmed kernel.
pub const TRIMMED: &str = "/var/cache/airlock/guest-kernel/current/vmlinux";
/// Where vm-images/guest/build-guest.sh leaves the Debian guest images.
pub const DEBIAN_IMAGES: &str = "/var/cache/airlock/guest";

impl KernelChoice {
    /// From `vm.kernel` and the image directory; with what was chosen and
    /// why, for the start-up log.
    pub fn new(configured: &str, image_dir: &Path) -> (KernelChoice, String) {
        Self::with_defaults(
            configured,
            image_dir,
            Path::new(TRIMMED),
            Path::new(DEBIAN_IMAGES),
        )
    }

    fn with_defaults(
        configured: &str,
        image_dir: &Path,
        trimmed: &Path,
        debian: &Path,
    ) -> (KernelChoice, String) {
        let auto = configured == "auto";
        let debian_image = || {
            std::fs::canonicalize(image_dir)
                .is_ok_and(|d| std::fs::canonicalize(debian).is_ok_and(|deb| d.starts_with(deb)))
        };
        let configured = if auto { trimmed } else { Path::new(configured) };
        let stock = image_dir.join("vmlinux");
        let (preferred, why) = if auto && !debian_image() {
            (
                None,
                format!(
                    "vm.kernel = \"auto\": the image's own kernel (the trimmed kernel is taken only for the Debian build's images under {})",
                    debian.display()
                ),
            )
        } else if configured.as_os_str().is_empty() {
            (
                None,
                "vm.kernel is empty: the image's own kernel".to_owned(),
            )
        } else if configured == stock {
            (None, "vm.kernel is the image's own kernel".to_owned())
        } else if configured.is_file() {
            (
                Some(configured.to_owned()),
                format!(
                    "vm.kernel {} (the image's own kernel if a VM does not boot on it)",
                    configured.display()
                ),
            )
        } else {
            (
                None,
                format!(
                    "vm.kernel {} not found (vm-images/guest/build-kernel.sh builds it; scripts/setup.sh test does): the image's own kernel",
                    configured.display()
                ),
            )
        };
        (
            KernelChoice {
                stock,
                preferred: Mutex::new(preferred),
            },
            why,
        )
    }

    /// The kernel the next VM boots.
    pub fn current(&self) -> PathBuf {
        self.preferred
            .lock()
            .map(|p| p.clone())
            .ok()
            .flatten()
            .unwrap_or_else(|| self.stock.clone())
    }

    /// A VM on `kernel` never started its agent: if that was the
    /// preferred kernel, give it up and return true (boot that VM again on
    /// the image's kernel); the image's own kernel has no fallback.
    pub fn did_not_boot(&self, kernel: &Path) -> bool {
        let Ok(mut p) = self.preferred.lock() else {
            return false;
        };
        if p.as_deref() == Some(kernel) {
            *p = None;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferred_while_it_boots_then_the_image_kernel() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("trimmed");
        std::fs::write(&k, "").unwrap();
        let img = d.path().join("img");
        std::fs::create_dir(&img).unwrap();
        let (c, why) = KernelChoice::new(k.to_str().unwrap(), &img);
        assert!(why.contains("if a VM does not boot on it"), "{why}");
        assert_eq!(c.current(), k);
        assert!(!c.did_not_boot(&img.join("vmlinux")));
        assert_eq!(c.current(), k);
        assert!(c.did_not_boot(&k));
        assert_eq!(c.current(), img.join("vmlinux"));
        assert!(!c.did_not_boot(&k), "given up once");

        let (c, why) = KernelChoice::new(d.path().join("missing").to_str().unwrap(), &img);
        assert!(why.contains("not found"), "{why}");
        assert_eq!(c.current(), img.join("vmlinux"));
        let (c, _) = KernelChoice::new("", &img);
        assert_eq!(c.current(), img.join("vmlinux"));
    }

    #[test]
    fn auto_takes_the_trimmed_kernel_for_the_debian_images_only() {
        let d = tempfile::tempdir().unwrap();
        let trimmed = d.path().join("vmlinux-trimmed");
        std::fs::write(&trimmed, "").unwrap();
        let debian = d.path().join("guest");
        let img = debian.join("abc");
        std::fs::create_dir_all(&img).unwrap();
        std::os::unix::fs::symlink(&img, debian.join("current")).unwrap();
        let other = d.path().join("systemd-guest");
        std::fs::create_dir(&other).unwrap();
        let choose = |img: &Path| KernelChoice::with_defaults("auto", img, &trimmed, &debian);
        assert_eq!(choose(&debian.join("current")).0.current(), trimmed);
        assert_eq!(choose(&img).0.current(), trimmed);
        let (c, why) = choose(&other);
        assert_eq!(c.current(), other.join("vmlinux"));
        assert!(why.contains("only for the Debian build's images"), "{why}");
        // Not built: the image's own.
        std::fs::remove_file(&trimmed).unwrap();
        assert_eq!(choose(&img).0.current(), img.join("vmlinux"));
    }
}
