//! `evogate restore`, `evogate store copy`, `verify` and `compact`: the
//! store worked on directly, with the gateway stopped (the redb file is
//! locked while a gateway has it open).

use anyhow::Context as _;
use evogate::kv::backup::{self, Summary};
use std::path::Path;

/// The store the configuration at `path` (or the defaults) names, opened.
fn open(path: Option<&Path>) -> anyhow::Result<(std::sync::Arc<dyn evogate::kv::Backend>, String)> {
    let config = evogate::config::Config::load(path)?;
    let backend = evogate::kv::open(&config.store, &config.data_dir())
        .context("opening the store (is a gateway running on it? stop it first)")?;
    let describe = backend.describe();
    Ok((backend, describe))
}

/// A progress line on a terminal.
fn progress(verb: &'static str) -> impl FnMut(&Summary) {
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut shown = std::time::Instant::now();
    move |summary: &Summary| {
        if show && shown.elapsed() >= std::time::Duration::from_millis(250) {
            eprint!("\r{verb}: {} records", summary.records);
            shown = std::time::Instant::now();
        }
    }
}

fn report(verb: &str, summary: &Summary, into: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    println!("{verb} {} records in {} namespaces into {into}", summary.records, summary.namespaces.len());
    for (ns, count) in &summary.namespaces {
        println!("    {ns}: {count}");
    }
}

/// `evogate restore --from FILE [--force]`.
pub fn restore(config: Option<&Path>, from: &Path, force: bool) -> anyhow::Result<()> {
    let (target, describe) = open(config)?;
    let restored = backup::restore_file(target.as_ref(), from, force, progress("restoring"))
        .with_context(|| format!("restoring {}", from.display()))?;
    report("restored", &restored, &describe);
    Ok(())
}

/// `evogate store copy --from A.toml --to B.toml [--force]`.
pub fn copy(from: &Path, to: &Path, force: bool) -> anyhow::Result<()> {
    let (source, _) = open(Some(from))?;
    let (target, describe) = open(Some(to))?;
    let copied = backup::copy_store(source.as_ref(), target.as_ref(), force, progress("copying"))
        .context("copying the store")?;
    report("copied", &copied, &describe);
    Ok(())
}

/// `evogate store verify [--file FILE]`: fails on the first problem found in a file, or any in a store.
pub fn verify(config: Option<&Path>, file: Option<&Path>) -> anyhow::Result<()> {
    let (summary, problems, what) = match file {
        Some(file) => {
            let reader = std::io::BufReader::new(
                std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
            );
            match backup::verify(reader) {
                Ok(summary) => (summary, Vec::new(), file.display().to_string()),
                Err(err) => (Summary::default(), vec![err.to_string()], file.display().to_string()),
            }
        }
        None => {
            let (backend, describe) = open(config)?;
            let inspection = backup::inspect(backend.as_ref())?;
            (inspection.summary, inspection.problems, describe)
        }
    };
    println!(
        "{what}: {} records in {} namespaces, version counter {}",
        summary.records,
        summary.namespaces.len(),
        summary.last_version
    );
    for (ns, count) in &summary.namespaces {
        println!("    {ns}: {count}");
    }
    for problem in &problems {
        println!("problem: {problem}");
    }
    anyhow::ensure!(problems.is_empty(), "{} problem(s) found in {what}", problems.len());
    Ok(())
}

/// `evogate store compact`: redb only; PostgreSQL has `VACUUM`.
pub fn compact(config: Option<&Path>) -> anyhow::Result<()> {
    let config = evogate::config::Config::load(config)?;
    match config.store.backend {
        evogate::kv::BackendKind::Redb => {
            let path = config.data_dir().join("evogate.redb");
            let store = evogate::kv::RedbBackend::open(&path)
                .context("opening the store (is a gateway running on it? stop it first)")?;
            let (before, after) = store.compact()?;
            let mib = |bytes: u64| bytes as f64 / 1048576.0;
            println!("{}: {:.1} MiB before, {:.1} MiB after", path.display(), mib(before), mib(after));
            Ok(())
        }
        evogate::kv::BackendKind::Postgres => anyhow::bail!(
            "a PostgreSQL store is compacted by the database: VACUUM (or VACUUM FULL, which locks the table) {}.evogate_kv",
            config.store.schema
        ),
        evogate::kv::BackendKind::Memory => anyhow::bail!("the memory store keeps nothing on disk"),
    }
}
