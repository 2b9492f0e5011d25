//! Every path under `jobs/<id>/`: the one place that knows the job
//! directory's layout (docs/operations.md, "Files").

use std::path::PathBuf;

/// Files of one job under `jobs/<id>/`.
pub struct JobPaths {
    pub dir: PathBuf,
}

impl JobPaths {
    pub fn build_log(&self) -> PathBuf {
        self.dir.join("build.log")
    }
    /// The job's signed attestations, one JSON per line (attest).
    pub fn attestations(&self) -> PathBuf {
        self.dir.join("attestations.jsonl")
    }
    /// A re-fetch job's finding ([`super::RefetchOutcome`]).
    pub fn refetch_outcome(&self) -> PathBuf {
        self.dir.join("refetch.json")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn channel_log(&self) -> PathBuf {
        self.dir.join("channel.log")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("vm.pid")
    }
    pub fn checkout(&self) -> PathBuf {
        self.dir.join("checkout")
    }
    /// A queue-runner step's material, fetched and checked before the job
    /// runs: `request.bin` (the serve protocol's `BuildDerivation`) and
    /// `inputs/<base name>.nar`; moved into the input disk's tree.
    pub fn step_dir(&self) -> PathBuf {
        self.dir.join("step")
    }
    pub fn stage(&self) -> PathBuf {
        self.dir.join("input")
    }
    pub fn input_img(&self) -> PathBuf {
        self.dir.join("input.img")
    }
    /// The job's link to its base image (`crate::input`).
    pub fn base_img(&self) -> PathBuf {
        self.dir.join("base.img")
    }
    pub fn nix_img(&self) -> PathBuf {
        self.dir.join("nix.img")
    }
    pub fn export_img(&self) -> PathBuf {
        self.dir.join("export.img")
    }
    /// A review job's report, as JSON and as the PR comment's Markdown.
    pub fn report_json(&self) -> PathBuf {
        self.dir.join("report.json")
    }
    pub fn report_md(&self) -> PathBuf {
        self.dir.join("report.md")
    }
    /// The job record.
    pub fn record(&self) -> PathBuf {
        self.dir.join("job.json")
    }
    /// Everything that must not outlive the job (disks, trees).
    pub fn scratch(&self) -> Vec<PathBuf> {
        vec![
            self.checkout(),
            self.stage(),
            self.input_img(),
            self.base_img(),
            self.nix_img(),
            self.export_img(),
            self.channel_log(),
        ]
    }
    /// Remove the scratch files (the VM must be gone: see
    /// `runner::clear_scratch`).
    pub fn remove_scratch(&self) {
        for p in self.scratch() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
