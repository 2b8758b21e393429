//! Where a path really is ([`Location`]), so the config can tell when two
//! spellings name one file.
//!
//! A config is checked against the filesystem at every load, and may name
//! 1000 outputs in one directory beside 1000 inputs: [`Locator`] resolves
//! each directory once, and [`Places`] finds the first of many locations
//! that one collides with by a lookup, not by a pass over all of them (a
//! pass each was a million comparisons, 0.3 s of every such load).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Where a path really is, for comparing two spellings of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The path made absolute with `.`/`..` and symlinked directories
    /// resolved, the last component kept as written (it may be a link
    /// that a write replaces, or not exist yet).
    pub place: PathBuf,
    /// (device, inode) of the path itself (a final symlink not followed),
    /// when it exists: catches hard links.
    pub node: Option<(u64, u64)>,
    /// For inputs, which are read through links: where a final symlink
    /// leads, and that file's (device, inode).
    pub target: Option<(PathBuf, Option<(u64, u64)>)>,
}

impl Location {
    /// The location of a file the daemon writes by rename (the final symlink is replaced, not followed).
    pub fn of_output(path: &Path) -> Location {
        Locator::default().output(path)
    }

    /// The location of a file the daemon reads (through symlinks).
    pub fn of_input(path: &Path) -> Location {
        Locator::default().input(path)
    }

    /// True when writing `self` (an output) would replace `other` or what it leads to.
    pub fn collides_with(&self, other: &Location) -> bool {
        other.places().any(|p| *p == self.place) || self.node.is_some_and(|n| other.nodes().any(|o| o == n))
    }

    /// True when this path is inside the directory `dir` (resolved the same way).
    pub fn is_under(&self, dir: &Path) -> bool {
        Locator::default().is_under(self, dir)
    }

    /// The place, and where a final symlink leads.
    fn places(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.place).chain(self.target.as_ref().map(|(p, _)| p))
    }

    /// The (device, inode) of the path and of where it leads, those that exist.
    fn nodes(&self) -> impl Iterator<Item = (u64, u64)> {
        self.node
            .into_iter()
            .chain(self.target.as_ref().and_then(|(_, n)| *n))
    }
}

/// Makes [`Location`]s, remembering the working directory, each directory
/// it resolved and each input it located: many paths in few directories
/// cost one resolution per directory. For one look at the filesystem (a
/// load's checks), not kept beyond it.
#[derive(Default)]
pub struct Locator {
    cwd: Option<PathBuf>,
    dirs: HashMap<PathBuf, PathBuf>,
    inputs: HashMap<PathBuf, Location>,
}

impl Locator {
    /// [`Location::of_output`].
    pub fn output(&mut self, path: &Path) -> Location {
        let now = std::fs::symlink_metadata(path).ok();
        self.output_now(path, now.as_ref())
    }

    /// [`Locator::output`] of a path whose metadata (not through a final
    /// symlink) was just read: `now`, `None` when nothing is there.
    pub fn output_now(&mut self, path: &Path, now: Option<&std::fs::Metadata>) -> Location {
        Location {
            place: self.resolve_parent(path),
            node: now.map(|m| (m.dev(), m.ino())),
            target: None,
        }
    }

    /// [`Location::of_input`].
    pub fn input(&mut self, path: &Path) -> Location {
        if let Some(loc) = self.inputs.get(path) {
            return loc.clone();
        }
        let mut loc = self.output(path);
        if let Ok(real) = std::fs::canonicalize(path) {
            let node = std::fs::metadata(&real).ok().map(|m| (m.dev(), m.ino()));
            loc.target = Some((real, node));
        }
        self.inputs.insert(path.to_path_buf(), loc.clone());
        loc
    }

    /// [`Location::is_under`].
    pub fn is_under(&mut self, loc: &Location, dir: &Path) -> bool {
        loc.place.starts_with(self.resolve(dir))
    }

    fn absolute(&mut self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.cwd
                .get_or_insert_with(|| std::env::current_dir().unwrap_or_default())
                .join(path)
        }
    }

    /// [`resolve_all`], once per spelling.
    fn resolve(&mut self, path: &Path) -> &Path {
        let absolute = self.absolute(path);
        self.dirs.entry(absolute).or_insert_with_key(|a| resolve_all(a))
    }

    /// The directory resolved, plus the file name as written.
    fn resolve_parent(&mut self, path: &Path) -> PathBuf {
        let absolute = self.absolute(path);
        match (absolute.parent(), absolute.file_name()) {
            (Some(dir), Some(name)) => self.resolve(dir).join(name),
            _ => self.resolve(&absolute).to_path_buf(),
        }
    }
}

/// Absolute `path` with the longest existing prefix resolved through
/// symlinks (by the kernel, so `..` after a link means what it means to
/// `open`), and the part that does not exist yet added with `.` and `..`
/// folded: `out/../out/./a` and a symlinked `out` agree.
fn resolve_all(absolute: &Path) -> PathBuf {
    #[cfg(test)]
    tests::RESOLVED.with(|n| n.set(n.get() + 1));
    let parts: Vec<Component<'_>> = absolute.components().collect();
    for split in (1..=parts.len()).rev() {
        let existing: PathBuf = parts[..split].iter().collect();
        if let Ok(mut out) = std::fs::canonicalize(&existing) {
            for part in &parts[split..] {
                match part {
                    Component::CurDir => {}
                    Component::ParentDir => {
                        out.pop();
                    }
                    other => out.push(other),
                }
            }
            return out;
        }
    }
    absolute.to_path_buf()
}

/// Locations by every place and (device, inode) they have, each under the
/// number of the first added that has it: [`Places::first_shared`] is
/// [`Location::collides_with`], either way round, against all at once.
#[derive(Default)]
pub struct Places {
    places: HashMap<PathBuf, usize>,
    nodes: HashMap<(u64, u64), usize>,
}

impl Places {
    /// Adds `loc` as number `n` (numbers added in increasing order).
    pub fn add(&mut self, n: usize, loc: &Location) {
        for p in loc.places() {
            self.places.entry(p.clone()).or_insert(n);
        }
        for node in loc.nodes() {
            self.nodes.entry(node).or_insert(n);
        }
    }

    /// The first location added that shares a place or a (device, inode)
    /// with `loc` (its place or its link's target).
    pub fn first_shared(&self, loc: &Location) -> Option<usize> {
        let by_place = loc.places().filter_map(|p| self.places.get(p));
        let by_node = loc.nodes().filter_map(|n| self.nodes.get(&n));
        by_place.chain(by_node).min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// How many times this thread ran [`resolve_all`].
        pub(super) static RESOLVED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn many_paths_in_one_directory_resolve_it_once() {
        // 1000 outputs beside 1000 inputs: what a load with 1000
        // credentials locates (it resolved every path's directory, 15,000
        // readlinks, and compared each output with every input).
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("out")).unwrap();
        std::fs::write(d.join("password"), "x").unwrap();
        let before = RESOLVED.with(|n| n.get());
        let mut locator = Locator::default();
        let mut inputs = Places::default();
        let mut outputs = Places::default();
        for i in 0..1000 {
            inputs.add(i, &locator.input(&d.join("password")));
            let here = locator.output(&d.join(format!("out/c{i}.token")));
            assert_eq!(inputs.first_shared(&here), None);
            assert_eq!(outputs.first_shared(&here), None);
            outputs.add(i, &here);
        }
        let x = locator.output(&d.join("out/x"));
        assert!(locator.is_under(&x, d));
        let resolved = RESOLVED.with(|n| n.get()) - before;
        assert!(resolved <= 3, "{resolved} resolutions for two directories");
        // The last output again is found, as the first of its place.
        let again = locator.output(&d.join("out/./c999.token"));
        assert_eq!(outputs.first_shared(&again), Some(999));
    }

    #[test]
    fn spellings_of_one_file_collide() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("out")).unwrap();
        std::fs::write(d.join("out/a"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("out"), d.join("link")).unwrap();
        std::fs::hard_link(d.join("out/a"), d.join("hard")).unwrap();
        let a = Location::of_input(&d.join("out/a"));
        for other in ["out/./a", "out/../out/a", "link/a", "hard"] {
            assert!(Location::of_output(&d.join(other)).collides_with(&a), "{other}");
        }
        assert!(!Location::of_output(&d.join("out/b")).collides_with(&a));
        // Not existing yet: compared by resolved directory and name.
        let n = Location::of_output(&d.join("out/new"));
        assert!(Location::of_output(&d.join("link/../out/new")).collides_with(&n));
        assert!(Location::of_output(&d.join("out/sub/x")).is_under(&d.join("link")));
    }

    #[test]
    fn places_finds_the_first_location_one_collides_with() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("out")).unwrap();
        std::fs::write(d.join("out/real"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("out/real"), d.join("out/link")).unwrap();
        std::fs::hard_link(d.join("out/real"), d.join("hard")).unwrap();
        std::os::unix::fs::symlink(d.join("out"), d.join("dirlink")).unwrap();
        let mut locator = Locator::default();
        let mut inputs = Places::default();
        let added = [
            locator.input(&d.join("other")),
            // Read through the link: its target is an input too.
            locator.input(&d.join("out/link")),
            locator.input(&d.join("out/real")),
        ];
        for (n, loc) in added.iter().enumerate() {
            inputs.add(n, loc);
        }
        for (path, first) in [
            ("out/real", Some(1)),
            ("dirlink/real", Some(1)),
            ("hard", Some(1)),
            ("out/link", Some(1)),
            ("out/./../out/link", Some(1)),
            ("other", Some(0)),
            ("out/new", None),
        ] {
            let here = locator.output(&d.join(path));
            assert_eq!(inputs.first_shared(&here), first, "{path}");
            // The same answer as comparing with each in turn.
            let by_pass = added.iter().position(|input| here.collides_with(input));
            assert_eq!(by_pass, first, "{path}");
        }
        // A relative spelling resolves against the working directory.
        let cwd = std::env::current_dir().unwrap();
        let relative = pathdiff(&d.join("out/real"), &cwd);
        assert_eq!(inputs.first_shared(&locator.output(&relative)), Some(1));
    }

    /// `to` spelled relative to `from`, with `..` (both absolute).
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let mut up = PathBuf::new();
        for _ in from.components().skip(1) {
            up.push("..");
        }
        up.join(to.strip_prefix("/").unwrap())
    }
}
