//! The file server of an env (Spark: `NettyStreamManager`): the files, jars and directories it
//! serves, and which file a stream id names.
//!
//! Files and jars are flat maps from a name to a canonical path; directories map a key (the base
//! URI without its leading `/`) to a canonical directory. A stream id `/files/<name>`,
//! `/jars/<name>` or `/<key>/<relative path>` names a file; a file under a directory is served
//! only if its canonical path lies inside that directory (no `..`, no absolute part, no symlink
//! leading out) and is a regular file. Everything else is `Stream '<id>' was not found.`, the
//! text Spark's executor class loader matches.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rpcenv_transport::{BodySource, FileRegion, ReplyBody};

use crate::error::RpcError;
use crate::file_uri::{encode_name, normalize_directory};

/// The served files of one env. Shared by its [`FileServer`] handles and its transport handler.
#[derive(Debug, Default)]
pub(crate) struct FileRegistry {
    maps: Mutex<Maps>,
}

#[derive(Debug, Default)]
struct Maps {
    files: HashMap<String, PathBuf>,
    jars: HashMap<String, PathBuf>,
    dirs: HashMap<String, PathBuf>,
}

/// What a stream id names, before the file system is asked.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A registered file or jar (its canonical path).
    File(PathBuf),
    /// `rest` under the registered directory `dir`.
    InDir { dir: PathBuf, rest: String },
    /// A first segment that is no registered directory.
    UnknownDir(String),
    /// Nothing registered under that id.
    Missing,
}

/// The text of a missing stream, which Spark's executor class loader matches.
pub(crate) fn not_found(stream_id: &str) -> String {
    format!("Stream '{stream_id}' was not found.")
}

impl FileRegistry {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Splits `stream_id` once after its leading `/` (Spark: `openStream`).
    fn target(&self, stream_id: &str) -> Target {
        let id = stream_id.strip_prefix('/').unwrap_or(stream_id);
        let Some((kind, rest)) = id.split_once('/') else {
            return Target::Missing;
        };
        let maps = self.maps();
        let found = match kind {
            "files" => maps.files.get(rest),
            "jars" => maps.jars.get(rest),
            dir => {
                return match maps.dirs.get(dir) {
                    Some(d) => Target::InDir {
                        dir: d.clone(),
                        rest: rest.to_string(),
                    },
                    None => Target::UnknownDir(dir.to_string()),
                }
            }
        };
        found.map_or(Target::Missing, |p| Target::File(p.clone()))
    }

    /// The body of the stream `stream_id`, or the failure text to answer (Spark's texts).
    pub(crate) fn open(&self, stream_id: &str) -> Result<ReplyBody, String> {
        let path = match self.target(stream_id) {
            Target::File(path) => path,
            Target::InDir { dir, rest } => match contained(&dir, &rest) {
                Some(path) => path,
                None => {
                    tracing::warn!(stream_id, dir = %dir.display(), "stream request for a path that is missing or not inside its directory");
                    return Err(not_found(stream_id));
                }
            },
            Target::UnknownDir(dir) => {
                tracing::debug!(stream_id, "stream request for an unknown directory");
                return Err(format!(
                    "requirement failed: Invalid stream URI: {dir} not found."
                ));
            }
            Target::Missing => {
                tracing::debug!(stream_id, "stream request for a file not served");
                return Err(not_found(stream_id));
            }
        };
        match body(&path) {
            Some(body) => Ok(body),
            None => {
                tracing::debug!(stream_id, path = %path.display(), "served file is gone, unreadable or not a regular file");
                Err(not_found(stream_id))
            }
        }
    }
}

/// Files up to this size are read when requested; larger ones are opened when their turn to be
/// written comes and read in pieces as the socket takes them.
const READ_AT_ONCE: u64 = 64 * 1024;

/// The reply body of the regular file at `path` (`None`: missing, not a regular file, or
/// unreadable). A small file is read now, so that its bytes count in the connection's byte
/// budget; a larger one counts its length there and holds no descriptor until it is written, so a
/// peer that asks again and again without reading holds neither memory nor descriptors beyond
/// the budget.
fn body(path: &Path) -> Option<ReplyBody> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let len = meta.len();
    if len == 0 {
        return Some(ReplyBody::Bytes(Bytes::new()));
    }
    if len > READ_AT_ONCE {
        return Some(ReplyBody::source(ServedFile {
            path: path.to_path_buf(),
            len,
            region: None,
        }));
    }
    let mut region = open_regular(path, len).ok()?;
    region.next_piece(len as usize).ok().map(ReplyBody::Bytes)
}

/// `len` bytes of the regular file at `path` (checked on the open handle; the path was checked
/// before it was opened, so a FIFO put in its place is not what was resolved).
fn open_regular(path: &Path, len: u64) -> std::io::Result<FileRegion> {
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(format!(
            "{} is no longer a regular file",
            path.display()
        )));
    }
    Ok(FileRegion::new(file, 0, len))
}

/// A served file opened when the connection starts writing it (one descriptor per connection
/// at a time, however many replies wait). A file that shrank or vanished meanwhile ends the
/// body short, which closes the connection: the peer cannot tell a truncated body otherwise.
struct ServedFile {
    path: PathBuf,
    len: u64,
    region: Option<FileRegion>,
}

impl BodySource for ServedFile {
    fn len(&self) -> u64 {
        self.region.as_ref().map_or(self.len, BodySource::len)
    }

    fn next_piece(&mut self, max: usize) -> std::io::Result<Bytes> {
        let region = match &mut self.region {
            Some(region) => region,
            None => self.region.insert(open_regular(&self.path, self.len)?),
        };
        region.next_piece(max)
    }
}

/// The canonical path of `rest` under `dir` (canonical) if it is a file strictly inside it.
/// An absolute `rest` is relative to `dir` (as Java's `new File(dir, rest)`; `Path::join` would
/// replace `dir`); `..` and symlinks are resolved before the check.
fn contained(dir: &Path, rest: &str) -> Option<PathBuf> {
    let relative = rest.trim_start_matches('/');
    if relative.is_empty() {
        return None;
    }
    let canonical = dir.join(relative).canonicalize().ok()?;
    (canonical.starts_with(dir) && canonical != dir).then_some(canonical)
}

/// The canonical form of `path`, or the error naming it.
fn canonical(path: &Path) -> Result<PathBuf, RpcError> {
    path.canonicalize().map_err(|source| RpcError::FileIo {
        path: path.display().to_string(),
        source,
    })
}

/// The file server of a server-mode env (Spark: `RpcEnvFileServer`): serves files, jars and
/// directories to other envs (and to Spark's `openChannel`), which fetch them with
/// [`RpcEnv::open_channel`](crate::RpcEnv::open_channel). Cheap to clone.
///
/// The URIs it returns are `rpc://host:port/...`; `spark://` URIs with the same path are
/// accepted by `open_channel` too. A path must exist when it is added.
#[derive(Clone, Debug)]
pub struct FileServer {
    registry: Arc<FileRegistry>,
    /// `rpc://host:port` of the env.
    base: String,
}

/// Which flat map a file goes to.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Jar,
}

impl FileServer {
    pub(crate) fn new(registry: Arc<FileRegistry>, base: String) -> Self {
        FileServer { registry, base }
    }

    /// Serves the file at `path` as `rpc://host:port/files/<name>` (the name percent-encoded as
    /// Spark does: `file name` is `file%20name`). Adding the same name again is accepted when it
    /// is the same file (same canonical path) and refused with
    /// [`RpcError::FileAlreadyRegistered`] otherwise.
    pub fn add_file(&self, path: impl AsRef<Path>) -> Result<String, RpcError> {
        self.add(Kind::File, path.as_ref())
    }

    /// As [`add_file`](Self::add_file), under `rpc://host:port/jars/<name>`.
    pub fn add_jar(&self, path: impl AsRef<Path>) -> Result<String, RpcError> {
        self.add(Kind::Jar, path.as_ref())
    }

    fn add(&self, kind: Kind, path: &Path) -> Result<String, RpcError> {
        let canonical = canonical(path)?;
        let name = path
            .file_name()
            .or_else(|| canonical.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| RpcError::FileIo {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
            })?;
        let mut maps = self.registry.maps();
        let (map, prefix) = match kind {
            Kind::File => (&mut maps.files, "files"),
            Kind::Jar => (&mut maps.jars, "jars"),
        };
        if let Some(old) = map.get(&name) {
            if *old != canonical {
                return Err(RpcError::FileAlreadyRegistered {
                    name,
                    old: old.display().to_string(),
                    new: canonical.display().to_string(),
                });
            }
        } else {
            map.insert(name.clone(), canonical);
        }
        Ok(format!("{}/{prefix}/{}", self.base, encode_name(&name)))
    }

    /// Serves the files under the directory `dir` as `rpc://host:port<base>/<relative path>`,
    /// where `<base>` is `base_uri` normalised (one leading `/`, no trailing one, `.` and `..`
    /// resolved). Returns `rpc://host:port<base>`. `/files` and `/jars` are refused
    /// ([`RpcError::ReservedDirectoryUri`]), and so is a base already serving a directory
    /// ([`RpcError::DirectoryUriTaken`]).
    pub fn add_directory(&self, base_uri: &str, dir: impl AsRef<Path>) -> Result<String, RpcError> {
        self.add_dir(base_uri, dir.as_ref(), false)
    }

    /// As [`add_directory`](Self::add_directory), but a base already serving a directory is left
    /// as it is and its URI returned.
    pub fn add_directory_if_absent(
        &self,
        base_uri: &str,
        dir: impl AsRef<Path>,
    ) -> Result<String, RpcError> {
        self.add_dir(base_uri, dir.as_ref(), true)
    }

    fn add_dir(&self, base_uri: &str, dir: &Path, if_absent: bool) -> Result<String, RpcError> {
        let fixed = normalize_directory(base_uri);
        if fixed == "/files" || fixed == "/jars" {
            return Err(RpcError::ReservedDirectoryUri {
                uri: base_uri.to_string(),
            });
        }
        let canonical = canonical(dir)?;
        let mut maps = self.registry.maps();
        let key = fixed[1..].to_string();
        match maps.dirs.entry(key) {
            Entry::Occupied(_) if !if_absent => {
                return Err(RpcError::DirectoryUriTaken { uri: fixed })
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(v) => {
                v.insert(canonical);
            }
        }
        Ok(format!("{}{}", self.base, encode_path(&fixed)))
    }

    /// Stops serving the file called `name`; whether it was served.
    pub fn remove_file(&self, name: &str) -> bool {
        self.registry.maps().files.remove(name).is_some()
    }

    /// Stops serving the jar called `name`; whether it was served.
    pub fn remove_jar(&self, name: &str) -> bool {
        self.registry.maps().jars.remove(name).is_some()
    }
}

/// A path's segments encoded one by one.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_name)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rpcenv-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.canonicalize().unwrap()
    }

    #[test]
    fn only_regular_files_inside_the_directory_resolve() {
        let root = scratch("contained");
        let dir = root.join("dir");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"x").unwrap();
        std::fs::write(root.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(root.join("secret"), dir.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.join("sub/f"), dir.join("in")).unwrap();
        assert_eq!(contained(&dir, "sub/f"), Some(dir.join("sub/f")));
        assert_eq!(contained(&dir, "sub/../sub/./f"), Some(dir.join("sub/f")));
        assert_eq!(
            contained(&dir, "in"),
            Some(dir.join("sub/f")),
            "a symlink inside"
        );
        assert_eq!(contained(&dir, "../secret"), None);
        assert_eq!(contained(&dir, "../../secret"), None);
        assert_eq!(contained(&dir, "out"), None, "a symlink leading out");
        assert_eq!(contained(&dir, ""), None);
        assert_eq!(contained(&dir, "."), None, "the directory itself");
        // An absolute part stays under the directory (as Java's `new File(dir, "/abs")`).
        let abs = root.join("secret").display().to_string();
        assert_eq!(contained(&dir, &abs), None);
        let inside = format!("/{}", "sub/f");
        assert_eq!(contained(&dir, &inside), Some(dir.join("sub/f")));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn stream_ids_split_once_after_the_leading_slash() {
        let registry = Arc::new(FileRegistry::default());
        let root = scratch("target");
        std::fs::write(root.join("a b"), b"1").unwrap();
        let server = FileServer::new(registry.clone(), "rpc://h:1".into());
        server.add_file(root.join("a b")).unwrap();
        server.add_directory("/d", &root).unwrap();
        assert_eq!(
            registry.target("/files/a b"),
            Target::File(root.join("a b"))
        );
        assert_eq!(registry.target("/jars/a b"), Target::Missing);
        assert_eq!(registry.target("/files/a b/c"), Target::Missing);
        assert_eq!(registry.target("/files"), Target::Missing);
        assert_eq!(
            registry.target("/d/x/y"),
            Target::InDir {
                dir: root.clone(),
                rest: "x/y".into()
            }
        );
        assert_eq!(
            registry.target("/nodir/x"),
            Target::UnknownDir("nodir".into())
        );
        assert_eq!(
            registry.open("/nodir/x").unwrap_err(),
            "requirement failed: Invalid stream URI: nodir not found."
        );
        assert_eq!(
            registry.open("/files/zz").unwrap_err(),
            "Stream '/files/zz' was not found."
        );
        assert_eq!(
            registry.open("/d").unwrap_err(),
            "Stream '/d' was not found."
        );
        assert_eq!(registry.open("/files/a b").unwrap().len(), 1);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn registration_follows_sparks_rules() {
        let root = scratch("rules");
        std::fs::create_dir_all(root.join("other")).unwrap();
        std::fs::write(root.join("f"), b"1").unwrap();
        std::fs::write(root.join("other/f"), b"2").unwrap();
        let server = FileServer::new(Arc::default(), "rpc://h:1".into());
        assert_eq!(
            server.add_file(root.join("f")).unwrap(),
            "rpc://h:1/files/f"
        );
        assert_eq!(
            server.add_file(root.join("other/../f")).unwrap(),
            "rpc://h:1/files/f",
            "the same canonical file again"
        );
        let err = server
            .add_file(root.join("other/f"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "File f was already registered with a different path (old path = {}, new path = {}",
                root.join("f").display(),
                root.join("other/f").display()
            )
        );
        assert_eq!(
            server.add_jar(root.join("other/f")).unwrap(),
            "rpc://h:1/jars/f"
        );
        assert_eq!(server.add_directory("/d/", &root).unwrap(), "rpc://h:1/d");
        for taken in ["/d", "d", "/d/./", "/x/../d/"] {
            assert_eq!(
                server.add_directory(taken, &root).unwrap_err().to_string(),
                "URI '/d' already registered."
            );
        }
        assert_eq!(
            server.add_directory_if_absent("/d", &root).unwrap(),
            "rpc://h:1/d"
        );
        for reserved in ["/files", "/jars/", "jars"] {
            assert_eq!(
                server
                    .add_directory(reserved, &root)
                    .unwrap_err()
                    .to_string(),
                "Directory URI cannot be /files nor /jars."
            );
        }
        assert!(server.add_file(root.join("missing")).is_err());
        assert!(server.remove_file("f"));
        assert!(!server.remove_file("f"));
        assert!(server.remove_jar("f"));
        std::fs::remove_dir_all(root).unwrap();
    }
}
