//! What a run is measured against: the stand-in, its users, the
//! `[[credential]]` blocks, and a temp dir with the daemon's config.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use voipbin_tokend_standin::{StandIn, StandInOptions};

use crate::{PASSWORD, Res};

/// A stand-in without rate limit, issuing tokens of `lifetime`, with
/// `users` accounts.
pub(crate) fn standin(lifetime: Duration, users: usize) -> Res<StandIn> {
    Ok(StandIn::start(StandInOptions {
        rate_limit: None,
        lifetime,
        users: (0..users).map(user).collect(),
        ..StandInOptions::default()
    })?)
}

pub(crate) fn user(i: usize) -> (String, String) {
    (format!("agent{i}@example.com"), PASSWORD.to_owned())
}

/// One `[[credential]]` block with its outputs under `out/`.
pub(crate) fn credential(i: usize, outputs: &[(&str, &str)], renew_at: f64, jitter: f64) -> String {
    let name = if i == 0 {
        "main".to_owned()
    } else {
        format!("c{i}")
    };
    let mut s = format!(
        "[[credential]]\nname = \"{name}\"\nusername = \"{}\"\npassword-file = \"password\"\n\
         renew-at = {renew_at}\njitter = {jitter}\n",
        user(i).0
    );
    for (path, format) in outputs {
        s.push_str(&format!(
            "\n[[credential.output]]\npath = \"out/{path}\"\nformat = \"{format}\"\n"
        ));
    }
    s.push('\n');
    s
}

/// A temp dir with `config.toml`, `password`, `out/` and `state/`.
pub(crate) struct BenchDir {
    pub(crate) dir: tempfile::TempDir,
    base_url: String,
}

impl BenchDir {
    pub(crate) fn new(base_url: &str, credentials: &[String]) -> Res<BenchDir> {
        BenchDir::new_in(&std::env::temp_dir(), base_url, credentials)
    }

    /// [`BenchDir::new`] under `parent`.
    pub(crate) fn new_in(parent: &Path, base_url: &str, credentials: &[String]) -> Res<BenchDir> {
        let dir = tempfile::Builder::new()
            .prefix("tokend-footprint-")
            .tempdir_in(parent)?;
        fs::create_dir(dir.path().join("out"))?;
        fs::create_dir(dir.path().join("state"))?;
        let password = dir.path().join("password");
        fs::write(&password, format!("{PASSWORD}\n"))?;
        fs::set_permissions(&password, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let d = BenchDir {
            dir,
            base_url: base_url.to_owned(),
        };
        d.write_config(credentials)?;
        Ok(d)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces config.toml atomically, like an editor does.
    pub(crate) fn write_config(&self, credentials: &[String]) -> Res<()> {
        let mut text = format!(
            "[api]\nbase-url = \"{}\"\ntimeout = \"10s\"\nmax-logins-per-second = 0\n\n\
             [state]\ndir = \"state\"\n\n",
            self.base_url
        );
        for c in credentials {
            text.push_str(c);
        }
        let tmp = self.path("next-config.tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, self.path("config.toml"))?;
        Ok(())
    }
}
