//! `buildnet build` and `buildnet history`: send a project's inputs by digest (only what the
//! node lacks), start the build, show progress, write the outputs back into the project.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use buildnet_actors::builds::estimate::BuildEstimation;
use buildnet_actors::builds::history::BuildSummary;
use buildnet_actors::builds::inputs;
use buildnet_actors::builds::runner::{BuildRequest, BuildState, BuildStatus, PackageState, PackageStatus};
use buildnet_actors::builds::uptodate::{self, Record};
use buildnet_actors::cas::{self, FileRef};

use super::output::{self, time, Format, Table};
use super::{writeback, CliError, Ctx};

#[derive(Args)]
pub struct BuildArgs {
    /// Project directory holding buildnet.toml
    #[arg(long, default_value = ".")]
    pub project: PathBuf,
    /// Run every package even if its result is cached
    #[arg(long)]
    pub force: bool,
    /// Keep everything on this node
    #[arg(long)]
    pub local_only: bool,
    /// Use a saved configuration (name or id)
    #[arg(long, conflicts_with = "template")]
    pub config: Option<String>,
    /// Use a template's configuration (e.g. local-only, quick-build)
    #[arg(long)]
    pub template: Option<String>,
    /// Only estimate how long it would take; run nothing
    #[arg(long)]
    pub estimate: bool,
    /// Ask the node even when nothing changed since the last build of this project here (it
    /// then finds every package in its cache, and the build is recorded in its history)
    #[arg(long)]
    pub ask_node: bool,
}

#[derive(Args)]
pub struct HistoryArgs {
    /// Show one build in detail
    pub build_id: Option<String>,
    /// Number of builds (`-l` as in plan §7.2, where `-l` is the short form of `limit`)
    #[arg(short = 'n', long = "limit", visible_short_alias = 'l', default_value_t = 20)]
    pub limit: usize,
}

#[derive(Serialize, Deserialize)]
struct Missing {
    missing: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Started {
    build_id: String,
    /// The build's end, when it came within the start request's wait.
    #[serde(default)]
    status: Option<BuildStatus>,
}

/// How long the start request waits for the build's end: a rebuild that finds everything cached
/// ends within it, so the whole build is one request; anything longer is followed as before.
const START_WAIT_MS: u64 = 100;

#[derive(Serialize, Deserialize)]
struct BuildList {
    builds: Vec<BuildSummary>,
}

/// A build read from its project and ready to ask the node for, or found up to date.
pub enum Prepared {
    UpToDate,
    Ask(Box<Asking>),
}

/// What the asking half of a build takes from [`prepare`].
pub struct Asking {
    args: BuildArgs,
    root: PathBuf,
    request: BuildRequest,
    /// Where the record of this build goes, with what it is made of (see [`keep_record`]).
    record: Option<Recording>,
}

struct Recording {
    path: PathBuf,
    tools: String,
    digest: String,
    stamps: BTreeMap<String, inputs::Stamp>,
    watch: Option<inputs::Watch>,
    /// The last record of the project, whose settled stamps spare reading outputs that are
    /// still the files it wrote (`Record::vouched`).
    previous: Option<Record>,
}

/// Reads the project and its inputs and, for a build through the data dir's own node
/// (`local_dir`) with nothing changed since the last build of it there, answers "up to date"
/// without asking (`builds::uptodate`). This runs before the CLI's runtime starts or any
/// connection is made, so that answer costs neither.
pub fn prepare(args: BuildArgs, local_dir: Option<&Path>, format: Format) -> Result<Prepared, CliError> {
    let root = args
        .project
        .canonicalize()
        .map_err(|e| CliError::Usage(format!("--project {}: {e}", args.project.display())))?;
    // Builds through this data dir's node without a saved configuration or template keep a
    // record that lets the next one see it is up to date.
    let record_at = local_dir
        .filter(|_| args.config.is_none() && args.template.is_none() && !args.estimate)
        .map(|dir| (dir.to_path_buf(), Record::path(dir, &root)));
    let previous = record_at.as_ref().and_then(|(_, path)| Record::read(path));
    let tools = record_at.as_ref().and_then(|(dir, _)| uptodate::read_tools(dir));
    let asked = args.force || args.ask_node || format != Format::Table;
    let same_places = |r: &Record| {
        let mut places = writeback::ExistingPlaces::new(&root);
        r.outputs.iter().all(|o| places.of(&o.path).as_ref() == Some(&o.place))
    };
    // Whether the record may answer at all, told once for both checks below.
    let answerable = previous.as_ref().is_some_and(|r| !asked && tools.as_ref() == Some(&r.tools) && same_places(r));
    // Nothing the request is made from changed by stamps: answered without reading the project.
    // Before any output is checked: a stamp found settled against this last changed before the
    // check read the file (`Record::resettled`; taken after the check, a file changed while a
    // large output was hashed, or the CLI was stopped, was recorded as settled).
    let checked_from = uptodate::now_ns();
    if let (Some((_, path)), Some(previous)) = (&record_at, &previous) {
        if answerable && previous.unchanged(&root, args.local_only) {
            if let Some(checked) = previous.outputs_in_place() {
                if let Some(record) = previous.resettled(&checked, uptodate::settled_reference(checked_from)) {
                    let _ = record.write(path);
                }
                return Ok(up_to_date(previous, checked.hashed));
            }
        }
    }
    // The node collects a registered project's inputs with this same function.
    let snapshot = inputs::snapshot_known(&root, None, previous.as_ref().map(|r| (&r.inputs, &r.stamps)))
        .map_err(|e| CliError::Other(e.to_string()))?;
    let stamps = snapshot.stamps().clone();
    let watch = snapshot.watch().cloned();
    let inputs::Snapshot { project, files, .. } = snapshot;
    // Every field is the command line's or the project's: what a record keeps of the command
    // line (`Record::local_only`) must follow a field added here.
    let mut request = BuildRequest {
        project,
        files,
        force: args.force,
        local_only: args.local_only,
        config: args.config.clone(),
        template: args.template.clone(),
        inline_config: None,
    };
    let (Some((_, path)), Some(tools)) = (record_at, tools.clone()) else {
        return Ok(Prepared::Ask(Box::new(Asking { args, root, request, record: None })));
    };
    let forced = std::mem::replace(&mut request.force, false);
    let digest = uptodate::request_digest(&request);
    request.force = forced;
    if let Some(previous) = previous.as_ref().filter(|p| answerable && p.request == digest) {
        if let Some(checked) = previous.outputs_in_place() {
            // Stamps that settled since the record was written spare the next check its reads.
            let resettled = previous.resettled(&checked, uptodate::settled_reference(checked_from));
            let cli = uptodate::cli_stamp();
            if resettled.is_some() || stamps != previous.stamps || watch != previous.watch || cli != previous.cli {
                let mut record = resettled.unwrap_or_else(|| previous.clone());
                record.inputs = vouched(&request.files, &stamps);
                record.stamps = stamps;
                record.watch = watch;
                record.cli = cli;
                let _ = record.write(&path);
            }
            return Ok(up_to_date(previous, checked.hashed));
        }
    }
    let record = Some(Recording { path, tools, digest, stamps, watch, previous });
    Ok(Prepared::Ask(Box::new(Asking { args, root, request, record })))
}

pub async fn run(ctx: &Ctx, asking: Asking) -> Result<(), CliError> {
    let Asking { args, root, request, record } = asking;
    if args.estimate {
        return estimate(ctx, request).await;
    }
    // Only a build that ends in success with every output in place leaves a record; whatever
    // happens from here on, the one before no longer says what the project holds.
    if let Some(r) = &record {
        let _ = std::fs::remove_file(&r.path);
    }
    // Ctrl-C from here on cancels the build on the node (once it has an id), and a second one
    // leaves at once. One stream for the whole command: a signal that arrives while a request
    // is under way is kept for the next look, not lost (a `ctrl_c()` made anew for each pause
    // saw only the signals of that pause, and a following build's pauses are none).
    let mut interrupts = Interrupts::new();
    // The build is asked for first: when the node holds every input (a rebuild) that is the only
    // request; when it lacks some (`missing_blobs`) they are sent and the build asked for again.
    let body = serde_json::to_value(&request).map_err(|e| CliError::Other(e.to_string()))?;
    let start = format!("/api/build?wait_ms={START_WAIT_MS}");
    // A Ctrl-C while the build is asked for is kept until it has an id (`pending`).
    let mut pending = false;
    let asked = meanwhile(&mut interrupts, &mut pending, ctx.client.post(&start, Some(body.clone()))).await;
    let (started, uploaded): (Started, usize) = match asked {
        Err(CliError::Api { code, .. }) if code == "missing_blobs" => {
            let no_build = || CliError::Other("interrupted while sending the inputs; no build was started".into());
            if pending {
                return Err(no_build());
            }
            let uploaded = tokio::select! {
                uploaded = upload_missing(ctx, &root, &request.files) => uploaded?,
                () = interrupts.next() => return Err(no_build()),
            };
            (meanwhile(&mut interrupts, &mut pending, ctx.client.post(&start, Some(body))).await?, uploaded)
        }
        other => (other?, 0),
    };
    let id = started.build_id;

    let bars = Bars::new(request.project.order.len() as u64, &id, uploaded, distinct_digests(&request.files).len());
    let mut cancelled = false;
    // The node answers at once when the build ends, else after 100 ms (progress for the bars),
    // so the end is seen when it happens rather than at the next poll. A node that answered
    // sooner without the build ending does not wait (an older one): then poll with a pause.
    let mut pause = Duration::from_millis(5);
    let mut ended = started.status;
    let status = loop {
        if let Some(status) = ended.take() {
            bars.update(&status);
            break status;
        }
        if std::mem::take(&mut pending) || interrupts.came() {
            cancel(ctx, &bars, &id, &mut cancelled, &mut interrupts).await?;
        }
        let asked = std::time::Instant::now();
        let poll = format!("/api/build/{id}?wait_ms=100");
        let status: BuildStatus = tokio::select! {
            status = ctx.client.get(&poll) => status?,
            () = interrupts.next() => {
                cancel(ctx, &bars, &id, &mut cancelled, &mut interrupts).await?;
                continue;
            }
        };
        bars.update(&status);
        if status.done() {
            break status;
        }
        let rest = if asked.elapsed() >= Duration::from_millis(50) { Duration::ZERO } else { pause };
        tokio::select! {
            _ = actix_rt::time::sleep(rest) => pause = (pause * 2).min(Duration::from_millis(100)),
            () = interrupts.next() => cancel(ctx, &bars, &id, &mut cancelled, &mut interrupts).await?,
        }
    };
    bars.finish();

    let mut written = 0;
    // Every output's place is checked before any is written (see `writeback`).
    let mut places = Vec::new();
    for f in status.outputs() {
        let dest = writeback::place(&root, &request.project, &f.path)?;
        places.push((f, dest));
    }
    let vouched_outputs = record.as_ref().and_then(|r| r.previous.as_ref()).map(Record::vouched);
    // Before any output is looked at or written: a stamp the record keeps vouches for the
    // content only if the file's last change came 2 s before this (`Record::add_output`). Taken
    // when the record is written instead, a file changed just after it was written or checked
    // looked settled to a CLI held up meanwhile (stopped, a slow hash), and the record vouched
    // for bytes the file no longer had.
    let checked_from = uptodate::now_ns();
    let writing = async {
        for (f, dest) in &places {
            if vouched_outputs.as_ref().is_some_and(|v| v.holds(dest, &f.digest, f.executable))
                || writeback::holds(dest, &f.digest, f.executable)
            {
                continue;
            }
            fetch_output(ctx, f, dest).await?;
            written += 1;
        }
        Ok::<(), CliError>(())
    };
    tokio::select! {
        wrote = writing => wrote?,
        // An output half-fetched is a temporary file beside its place, removed as its download
        // is dropped (`client::download_blob`); what is already at the place is untouched.
        () = interrupts.next() => return Err(CliError::Other(format!("interrupted while writing the outputs of build {id}"))),
    }
    if let Some(Recording { path, tools, digest, stamps, watch, .. }) = record {
        keep_record(&path, status.status == BuildState::Succeeded, || {
            let mut record = Record::new(digest, tools, id.clone(), status.packages.len(), request.local_only);
            record.inputs = vouched(&request.files, &stamps);
            record.stamps = stamps;
            record.watch = watch;
            record.cli = uptodate::cli_stamp();
            let reference = uptodate::settled_reference(checked_from);
            places.iter().all(|(f, dest)| record.add_output(dest, f, reference)).then_some(record)
        });
    }
    if ctx.printed_as_document(&status) {
        return if status.status == BuildState::Succeeded {
            Ok(())
        } else {
            Err(CliError::Other(status.error.unwrap_or_default()))
        };
    }
    let ran = status.packages.iter().filter(|p| p.state == PackageState::Succeeded).count();
    let cached = status.packages.iter().filter(|p| p.cache_hit).count();
    let secs = status.duration_ms.unwrap_or(0) as f64 / 1000.0;
    match status.status.as_str() {
        "succeeded" => {
            println!("Build {id} succeeded in {secs:.1} s: {} packages, {ran} ran, {cached} from cache; {written} output file(s) written.", status.packages.len());
            pattern_lines(&status.packages).iter().for_each(|l| println!("  {l}"));
            Ok(())
        }
        other => {
            if let Some(p) = status.packages.iter().find(|p| p.state == PackageState::Failed) {
                eprint!("{}", failure_report(p));
            }
            pattern_lines(&status.packages).iter().for_each(|l| eprintln!("  {l}"));
            Err(CliError::Other(format!("build {id} {other}: {}", status.error.unwrap_or_default())))
        }
    }
}

/// SIGINT (Ctrl-C) for a build the CLI follows, from the moment it is made: it then no longer
/// ends the process, and a signal is kept until it is looked for.
struct Interrupts {
    signals: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    fn new() -> Interrupts {
        Interrupts { signals: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok() }
    }

    /// The next interrupt (never, where none can be received).
    async fn next(&mut self) {
        match &mut self.signals {
            Some(signals) => {
                signals.recv().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Whether one came since the last look.
    fn came(&mut self) -> bool {
        use futures_util::FutureExt;
        self.next().now_or_never().is_some()
    }
}

/// Ctrl-C during a build: the first asks the node to cancel it (its packages are killed wherever
/// they run and the build ends `cancelled`, which the CLI then reports); a second leaves at once,
/// even while that request waits for a node that does not answer.
async fn cancel(
    ctx: &Ctx,
    bars: &Bars,
    id: &str,
    cancelled: &mut bool,
    interrupts: &mut Interrupts,
) -> Result<(), CliError> {
    let leave = || {
        CliError::Other(format!(
            "interrupted; build {id} is being cancelled on the node (`buildnet history {id}` shows it)"
        ))
    };
    if *cancelled {
        return Err(leave());
    }
    *cancelled = true;
    bars.note("cancelling… (Ctrl-C again to leave without waiting)");
    let url = format!("/api/build/{id}/cancel");
    tokio::select! {
        asked = ctx.client.post::<BuildStatus>(&url, None) => asked.map(|_| ()),
        () = interrupts.next() => Err(leave()),
    }
}

/// Awaits `request`, made before the build has an id, while Ctrl-C may come: the first is kept
/// in `pending` (the build is cancelled once it has an id), a second leaves at once.
async fn meanwhile<T>(
    interrupts: &mut Interrupts,
    pending: &mut bool,
    request: impl std::future::Future<Output = Result<T, CliError>>,
) -> Result<T, CliError> {
    tokio::pin!(request);
    loop {
        tokio::select! {
            done = &mut request => return done,
            () = interrupts.next() => {
                if *pending {
                    return Err(CliError::Other(
                        "interrupted while asking for the build; it may have started on the node (`buildnet history` shows it)".into(),
                    ));
                }
                *pending = true;
            }
        }
    }
}

/// Says a build is up to date; `hashed` outputs were checked by their content.
fn up_to_date(previous: &Record, hashed: usize) -> Prepared {
    let by_content = if hashed > 0 { format!(", {hashed} checked by content") } else { String::new() };
    println!(
        "Up to date: nothing changed since build {} ({} package(s), {} output file(s) in place{by_content}).",
        previous.build_id,
        previous.packages,
        previous.outputs.len(),
    );
    Prepared::UpToDate
}

/// Writes the record of a build that succeeded with every output in place, and removes the one
/// before otherwise. A record that cannot be written only means the next build asks the node.
fn keep_record(path: &Path, succeeded: bool, record: impl FnOnce() -> Option<Record>) {
    match succeeded.then(record).flatten() {
        Some(record) => match record.write(path) {
            Ok(()) => uptodate::sweep(path),
            Err(e) => eprintln!(
                "note: {}: {e} — the next build of this project will ask the node even if nothing changed",
                path.display()
            ),
        },
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The inputs a stamp vouches for.
fn vouched(files: &BTreeMap<String, FileRef>, stamps: &BTreeMap<String, inputs::Stamp>) -> BTreeMap<String, FileRef> {
    files.iter().filter(|(p, _)| stamps.contains_key(*p)).map(|(p, f)| (p.clone(), f.clone())).collect()
}

/// The distinct blobs a project's inputs are.
fn distinct_digests(files: &BTreeMap<String, FileRef>) -> Vec<String> {
    files.values().map(|f| f.digest.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
}

/// Sends the node the inputs it lacks; how many blobs that was.
async fn upload_missing(ctx: &Ctx, root: &Path, files: &BTreeMap<String, FileRef>) -> Result<usize, CliError> {
    let digests = distinct_digests(files);
    let missing: Missing =
        ctx.client.post("/api/blobs/missing", Some(serde_json::json!({ "digests": digests }))).await?;
    for digest in &missing.missing {
        if let Some(f) = files.values().find(|f| &f.digest == digest) {
            ctx.client.put_file(&format!("/api/blobs/{digest}"), &root.join(&f.path)).await?;
        }
    }
    Ok(missing.missing.len())
}

/// What a failed package left: the last 20 lines of its output under a header naming it and
/// its node, or one line saying it printed nothing (and why it failed, when known).
fn failure_report(p: &PackageStatus) -> String {
    let on = node_label(p).map(|n| format!(" on {n}")).unwrap_or_default();
    let exit = p.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
    let lines: Vec<&str> = p.output_tail.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        let why = p.error.as_deref().map(|e| format!(": {}", output::one_line(e))).unwrap_or_default();
        return format!("--- {}{on} failed{exit} and printed nothing{why} ---\n", p.name);
    }
    let mut out = format!("--- {}{on}{exit} (last lines of its output) ---\n", p.name);
    for line in &lines[lines.len().saturating_sub(20)..] {
        out.push_str(&output::one_line(line));
        out.push('\n');
    }
    out
}

/// The node a package runs or ran on: its name, else its id.
fn node_label(p: &PackageStatus) -> Option<String> {
    p.node_name.clone().filter(|n| !n.is_empty()).or_else(|| p.node.as_ref().map(|n| n.to_string()))
}

/// Writes output `f` at `dest` (whose directory exists): streamed into a new temporary file
/// beside it, checked against its digest on the fly, made executable if it was, then renamed
/// over `dest` — a rename replaces whatever is at `dest`, a symlink included, without following
/// it. Memory stays flat whatever the output's size.
async fn fetch_output(ctx: &Ctx, f: &FileRef, dest: &Path) -> Result<(), CliError> {
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("output");
    let tmp = dest.with_file_name(format!(".{name}.buildnet-{:016x}", rand::random::<u64>()));
    ctx.client.download_blob(&f.digest, &tmp).await?;
    let placed = cas::set_executable(&tmp, f.executable).and_then(|()| std::fs::rename(&tmp, dest));
    placed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Other(format!("{}: {e}", dest.display()))
    })
}

/// `--estimate`: asks the node how long the build would take, runs nothing.
async fn estimate(ctx: &Ctx, request: BuildRequest) -> Result<(), CliError> {
    let body = serde_json::to_value(&request).map_err(|e| CliError::Other(e.to_string()))?;
    let estimation: BuildEstimation = ctx.client.post("/api/build/estimate", Some(body)).await?;
    if ctx.printed_as_document(&estimation) {
        return Ok(());
    }
    println!("{}", estimation.format_human());
    let mut t =
        Table::new(&["package", "estimate", "basis", "confidence", "cpu factor", "storage factor", "cores used"]);
    for p in &estimation.package_estimates {
        let basis = match (p.cached, p.samples) {
            (true, _) => "cached".to_string(),
            (false, 0) => "input size (no history)".into(),
            (false, n) => format!("{n} recorded runs"),
        };
        t.row(vec![
            p.package.clone(),
            format!("{} ms", p.duration_ms),
            basis,
            format!("{:.2}", p.confidence),
            format!("{:.2}", p.factors.cpu_factor),
            format!("{:.2}", p.factors.storage_factor),
            format!("{:.1}", p.factors.parallel_speedup),
        ]);
    }
    t.print();
    Ok(())
}

/// "add on beta", or "add (choosing a node)" before the node is known.
fn running_line(p: &PackageStatus) -> String {
    match node_label(p) {
        Some(node) => format!("{} on {node}", p.name),
        None => format!("{} (choosing a node)", p.name),
    }
}

/// The overall bar and one line per running package (only on a terminal). Off a terminal, each
/// package's node is printed once as a plain line on stderr (`add on beta`), so logs say it too.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    running: std::cell::RefCell<BTreeMap<String, ProgressBar>>,
    plain: bool,
    /// Packages whose node has been printed as a plain line.
    logged: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

impl Bars {
    fn new(total: u64, id: &str, uploaded: usize, inputs: usize) -> Bars {
        let multi = MultiProgress::new();
        let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        if plain {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} packages {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        overall.set_prefix(id.to_string());
        overall.set_message(format!("({uploaded} of {inputs} inputs uploaded)"));
        Bars { multi, overall, running: Default::default(), plain, logged: Default::default() }
    }

    /// Off a terminal: the package's line, once, when its node is known.
    fn log(&self, p: &PackageStatus) {
        if self.plain && !self.logged.borrow().contains(&p.name) && node_label(p).is_some() {
            self.logged.borrow_mut().insert(p.name.clone());
            eprintln!("{}", running_line(p));
        }
    }

    fn update(&self, status: &BuildStatus) {
        let done = status
            .packages
            .iter()
            .filter(|p| !matches!(p.state, PackageState::Pending | PackageState::Running))
            .count();
        self.overall.set_position(done as u64);
        let mut running = self.running.borrow_mut();
        for p in &status.packages {
            if p.state == PackageState::Running {
                self.log(p);
            }
            // Off a terminal nothing is drawn: a spinner per package would only cost a bar and
            // its redraws for each of a build's packages.
            if self.plain {
                continue;
            }
            match (p.state, running.contains_key(&p.name)) {
                (PackageState::Running, false) => {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_message(running_line(p));
                    running.insert(p.name.clone(), bar);
                }
                // Turned at each answer (at least every 100 ms while the build runs) rather than
                // by a steady tick, which is a thread of its own per spinner.
                (PackageState::Running, true) => {
                    if let Some(bar) = running.get(&p.name) {
                        bar.set_message(running_line(p));
                        bar.tick();
                    }
                }
                (_, false) => {}
                (state, true) => {
                    if let Some(bar) = running.remove(&p.name) {
                        bar.finish_and_clear();
                        self.multi.remove(&bar);
                    }
                    if state == PackageState::Failed {
                        let _ = self.multi.println(format!(
                            "✗ {} failed: {}",
                            p.name,
                            output::one_line(p.error.as_deref().unwrap_or_default())
                        ));
                    }
                }
            }
        }
    }

    fn note(&self, text: &str) {
        self.overall.set_message(text.to_string());
    }

    fn finish(&self) {
        for bar in self.running.borrow().values() {
            bar.finish_and_clear();
        }
        self.overall.finish_and_clear();
    }
}

pub async fn history(ctx: &Ctx, args: HistoryArgs) -> Result<(), CliError> {
    match args.build_id {
        Some(id) => {
            let status: BuildStatus = ctx.client.get(&format!("/api/build/{id}")).await?;
            if ctx.printed_as_document(&status) {
                return Ok(());
            }
            println!(
                "Build {} — {} (started {}, {} ms){}",
                status.id,
                status.status,
                time(status.started_at_ms),
                status.duration_ms.unwrap_or(0),
                status.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
            );
            let mut t = Table::new(&["package", "state", "node", "cache", "duration", "exit", "error"]);
            for p in &status.packages {
                t.row(vec![
                    p.name.clone(),
                    p.state.as_str().into(),
                    node_label(p).unwrap_or_default(),
                    if p.cache_hit { "hit".into() } else { "".into() },
                    p.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
                    p.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    p.error.clone().unwrap_or_default(),
                ]);
            }
            t.print();
            pattern_lines(&status.packages).iter().for_each(|l| println!("{l}"));
        }
        None => {
            if args.limit == 0 || args.limit > 500 {
                return Err(CliError::Usage(format!("-n must be between 1 and 500, got {}", args.limit)));
            }
            let list: BuildList = ctx.client.get(&format!("/api/builds?limit={}", args.limit)).await?;
            if ctx.printed_as_document(&list) {
                return Ok(());
            }
            let mut t = Table::new(&["build", "status", "started", "duration", "packages", "ran", "cached", "nodes"]);
            for b in &list.builds {
                t.row(vec![
                    b.id.clone(),
                    b.status.to_string(),
                    time(b.started_at_ms),
                    b.duration_ms.map(|d| format!("{d} ms")).unwrap_or_default(),
                    b.packages.to_string(),
                    b.executed.to_string(),
                    b.cached.to_string(),
                    b.nodes.join(", "),
                ]);
            }
            t.print();
        }
    }
    Ok(())
}

/// One line per pattern package: its expansions counted by outcome, failures named (at most 10).
fn pattern_lines(packages: &[PackageStatus]) -> Vec<String> {
    use buildnet_actors::builds::project::expansion_of;
    let mut groups: BTreeMap<&str, Vec<&PackageStatus>> = BTreeMap::new();
    for p in packages {
        if let Some((table, _)) = expansion_of(&p.name) {
            groups.entry(table).or_default().push(p);
        }
    }
    groups
        .into_iter()
        .map(|(table, ps)| {
            let count = |s: PackageState| ps.iter().filter(|p| p.state == s).count();
            let mut line = format!(
                "{table}: {} expansions, {} ran, {} from cache",
                ps.len(),
                count(PackageState::Succeeded),
                count(PackageState::Cached)
            );
            let failed: Vec<&str> =
                ps.iter().filter(|p| p.state == PackageState::Failed).map(|p| p.name.as_str()).collect();
            if !failed.is_empty() {
                let more = failed.len().saturating_sub(10);
                line.push_str(&format!(", {} failed: {}", failed.len(), failed[..failed.len() - more].join(", ")));
                if more > 0 {
                    line.push_str(&format!(" and {more} more"));
                }
            }
            let waiting = ps.len() - count(PackageState::Succeeded) - count(PackageState::Cached) - failed.len();
            if waiting > 0 {
                line.push_str(&format!(", {waiting} not run"));
            }
            line
        })
        .collect()
}
