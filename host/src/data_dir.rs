//! The data directory: the store file, the admin token, deployed plugins
//! and compiled code, all readable by the user running evogate only.

use anyhow::Context as _;

/// Creates `dir` (and its missing parents) readable by this user only.
pub(crate) fn create(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The data directory holds every merchant's cloud token, the plugins'
/// data and the admin token: only the user running evogate may read it.
/// Its folders become 0700 and its files 0600 wherever they were looser
/// (a directory made by hand, a store from an earlier version), each
/// change logged; symbolic links are not followed.
#[cfg_attr(not(feature = "runtime"), allow(dead_code))]
pub(crate) fn make_private(root: &std::path::Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let tighten = |path: &std::path::Path, most: u32| -> anyhow::Result<()> {
            let metadata = std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & !most != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & most))
                    .with_context(|| format!("making {} private", path.display()))?;
                tracing::warn!(
                    path = %path.display(),
                    was = format!("{mode:04o}"),
                    now = format!("{:04o}", mode & most),
                    "the data directory was readable by others: permissions tightened"
                );
            }
            Ok(())
        };
        let mut folders = vec![root.to_owned()];
        while let Some(folder) = folders.pop() {
            tighten(&folder, 0o700)?;
            for entry in std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))? {
                let entry = entry.with_context(|| format!("listing {}", folder.display()))?;
                let kind = entry.file_type().with_context(|| format!("reading {}", entry.path().display()))?;
                if kind.is_dir() {
                    folders.push(entry.path());
                } else if kind.is_file() {
                    tighten(&entry.path(), 0o600)?;
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = root;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::symlink_metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_directory_is_private_with_its_parents() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("a/data");
        create(&dir).expect("create");
        assert_eq!((mode(&dir), mode(&temp.path().join("a"))), (0o700, 0o700));
    }

    #[test]
    fn a_looser_data_directory_is_tightened_and_links_are_not_followed() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("data");
        let deep = dir.join("plugins/evotor");
        std::fs::create_dir_all(&deep).expect("dirs");
        for (path, bits) in [(&dir, 0o755), (&dir.join("plugins"), 0o775), (&deep, 0o777)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).expect("chmod");
        }
        let store = dir.join("evogate.redb");
        let artifact = deep.join("current.wasm");
        let outside = temp.path().join("shared.txt");
        for (file, bits) in [(&store, 0o644), (&artifact, 0o664), (&outside, 0o644)] {
            std::fs::write(file, b"x").expect("write");
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(bits)).expect("chmod");
        }
        std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");
        make_private(&dir).expect("tightened");
        assert_eq!((mode(&dir), mode(&dir.join("plugins")), mode(&deep)), (0o700, 0o700, 0o700));
        assert_eq!((mode(&store), mode(&artifact)), (0o600, 0o600));
        assert_eq!(mode(&outside), 0o644, "a link's target outside is not ours to change");
        // Already private: nothing changes, a stricter mode stays as it is.
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        make_private(&dir).expect("again");
        assert_eq!(mode(&store), 0o400);
    }
}
