//! A fresh, empty directory per test, removed when dropped: tests write their files there and
//! run the command line there, so nothing depends on what the working directory (the user's
//! checkout, with `./data/mnist` after `bilevel data fetch`) holds.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An empty directory of its own under the system's temporary directory.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new empty directory whose name holds `name`, the process id and a counter, so two
    /// tests (or two calls of one test) never share one.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("bilevel-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        Self(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

/// The directory's path: `&scratch` is a `&Path`, `scratch.join(…)` a path inside it.
impl std::ops::Deref for Scratch {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
