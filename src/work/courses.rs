//! Course environments from merge requests: a plan comment on each merge request that
//! changes the course (one comment, edited), the version applied on merge (built, tagged
//! `current` in `courses/ID`, pulled on every blade), and readiness before each lecture.

use std::sync::Arc;

use gitlab::api::projects::repository::commits::CommitStatusState;
use sha2::Digest;

use crate::app::App;
use crate::courses::{self, plan, Course, ImageSource, COURSE_FILE};
use crate::gitlab::client::{self, Gitlab};
use crate::gitlab::hooks;
use crate::messages::{render, Lang};
use crate::store::audit::NewAudit;
use crate::store::courses::{CourseVersion, PlanRow};
use crate::store::gitlab::ProjectRow;

use super::TaskError;

/// The commit status a plan sets.
pub const STATUS: &str = "shisa/course";

fn retry(e: impl Into<anyhow::Error>) -> TaskError {
    TaskError::Retry(e.into())
}

fn gitlab_retry(e: client::GitlabError) -> TaskError {
    TaskError::Retry(anyhow::anyhow!(client::explain(&e)))
}

/// The project, if it is an enabled course project.
async fn course_project(app: &App, id: u64) -> Result<Option<ProjectRow>, TaskError> {
    Ok(app
        .store
        .gitlab_project(id)
        .await
        .map_err(retry)?
        .filter(|p| p.mode == "course"))
}

/// A Merge Request Hook of a course project: plan on open, reopen and update; apply on merge.
pub async fn on_merge_request(app: &Arc<App>, mr: &hooks::MergeRequest) -> Result<(), TaskError> {
    let Some(project) = course_project(app, mr.project.id).await? else {
        tracing::info!(
            project = mr.project.id,
            "merge request of a project that is not a course: ignored"
        );
        return Ok(());
    };
    let a = &mr.object_attributes;
    tracing::info!(project = %project.path, iid = a.iid, action = ?a.action, "course merge request");
    let head = a
        .last_commit
        .as_ref()
        .map(|c| c.id.clone())
        .unwrap_or_default();
    if head.is_empty() {
        return Ok(());
    }
    match a.action.as_deref() {
        Some("open") | Some("reopen") | Some("update") if a.state == "opened" => {
            plan_mr(app, &project, a.iid, &head, &a.target_branch, false).await
        }
        Some("merge") => {
            let default = mr
                .project
                .default_branch
                .clone()
                .unwrap_or_else(|| "main".into());
            if a.target_branch != default {
                return Ok(());
            }
            let sha = a.merge_commit_sha.clone().unwrap_or(head.clone());
            apply(app, &project, Some(a.iid), &sha, &head).await
        }
        _ => Ok(()),
    }
}

/// A comment `shisa plan` on a course project's open merge request plans it again.
pub async fn on_note(app: &Arc<App>, n: &hooks::Note) -> Result<(), TaskError> {
    let Some(mr) = &n.merge_request else {
        return Ok(());
    };
    if n.object_attributes.noteable_type != "MergeRequest"
        || !n
            .object_attributes
            .note
            .trim()
            .eq_ignore_ascii_case("shisa plan")
        || mr.state != "opened"
    {
        return Ok(());
    }
    let Some(project) = course_project(app, n.project.id).await? else {
        return Ok(());
    };
    let Some(head) = mr.last_commit.as_ref().map(|c| c.id.clone()) else {
        return Ok(());
    };
    plan_mr(app, &project, mr.iid, &head, &mr.target_branch, true).await
}

fn api(app: &App) -> Result<&dyn Gitlab, TaskError> {
    app.gitlab.as_deref().ok_or(TaskError::Gone)
}

async fn file_at(
    as_owner: &dyn Gitlab,
    project: u64,
    path: &str,
    git_ref: &str,
) -> Result<Option<String>, TaskError> {
    Ok(as_owner
        .raw_file(project, path, git_ref)
        .await
        .map_err(gitlab_retry)?
        .map(|b| String::from_utf8_lossy(&b).to_string()))
}

/// The course file as found at a commit, checked: the course, or why not in the words the
/// merge request comment uses (no file; the errors with their lines).
fn checked(file: Option<&str>) -> Result<Course, String> {
    let Some(text) = file else {
        return Err(render(
            Lang::En,
            "course.no_course_file",
            &[("file", COURSE_FILE.into())],
        ));
    };
    courses::parse(text).map_err(|errors| {
        let list = errors
            .iter()
            .map(|e| format!("- {e}"))
            .collect::<Vec<_>>()
            .join("\n");
        render(
            Lang::En,
            "course.plan_errors",
            &[("file", COURSE_FILE.into()), ("errors", list)],
        )
    })
}

/// Each blade's room, from its configuration.
fn rooms(app: &App) -> Vec<plan::BladeRoom> {
    app.cfg
        .blades
        .iter()
        .map(|b| plan::BladeRoom {
            name: b.name.clone(),
            cpus: b.cpus,
            memory: b.memory.as_ref().map(|m| m.bytes),
            gpu_slots: b.gpus.len() as u32 * b.gpu_share.max(1),
        })
        .collect()
}

fn fit_line(c: &Course, fit: &plan::Fit) -> String {
    let asked = format!("{} × {}", fit.seats, plan::per_student(c));
    if fit.fits() {
        render(
            Lang::En,
            "course.capacity_fits",
            &[
                ("asked", asked),
                ("blades", fit.blades.to_string()),
                ("room", fit.room.to_string()),
            ],
        )
    } else {
        render(
            Lang::En,
            "course.capacity_short",
            &[
                ("asked", asked),
                ("blades", fit.blades.to_string()),
                ("room", fit.room.to_string()),
                ("short", (fit.seats - fit.room).to_string()),
                ("resource", fit.short_of.unwrap_or("room").to_string()),
            ],
        )
    }
}

fn table(rows: &[(&str, String, String)]) -> String {
    if rows.is_empty() {
        return render(Lang::En, "course.plan_no_changes", &[]);
    }
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut t = render(Lang::En, "course.plan_table_header", &[]) + "\n";
    for (k, a, b) in rows {
        t.push_str(&format!("| {k} | {} | {} |\n", cell(a), cell(b)));
    }
    t
}

/// Post the plan comment, or edit the one this merge request already has.
async fn post_plan(
    app: &App,
    as_owner: &dyn Gitlab,
    project: u64,
    iid: u64,
    row: &mut PlanRow,
    body: &str,
) -> Result<(), TaskError> {
    match row.note_id {
        Some(id) => {
            as_owner
                .edit_mr_note(project, iid, id, body)
                .await
                .map_err(gitlab_retry)?;
        }
        None => {
            let id = as_owner
                .create_mr_note(project, iid, body)
                .await
                .map_err(gitlab_retry)?;
            row.note_id = Some(id);
        }
    }
    app.store
        .save_course_plan(project, iid, row.clone())
        .await
        .map_err(retry)
}

/// The course a project applied last, parsed (a stored file always parsed when applied).
async fn applied_course(
    app: &App,
    project: u64,
) -> Result<Option<(CourseVersion, Course)>, TaskError> {
    let v = app
        .store
        .current_course_of_project(project)
        .await
        .map_err(retry)?;
    Ok(v.and_then(|v| courses::parse(&v.file).ok().map(|c| (v, c))))
}

/// Another project that already has this course id.
async fn id_taken(app: &App, project: u64, id: &str) -> Result<Option<String>, TaskError> {
    let Some(v) = app.store.current_course(id).await.map_err(retry)? else {
        return Ok(None);
    };
    if v.project_id == project {
        return Ok(None);
    }
    Ok(Some(
        app.store
            .gitlab_project(v.project_id)
            .await
            .map_err(retry)?
            .map(|p| p.path)
            .unwrap_or_else(|| v.project_id.to_string()),
    ))
}

/// Plan a merge request: check the course file at its head, compare it with the applied
/// version, check capacity and the next lecture, build its image; one comment, edited.
pub async fn plan_mr(
    app: &Arc<App>,
    project: &ProjectRow,
    iid: u64,
    head: &str,
    target_branch: &str,
    force: bool,
) -> Result<(), TaskError> {
    let api = api(app)?;
    let as_owner = api.for_user(&project.gitlab_user);
    let pid = project.project_id;
    let file = file_at(as_owner.as_ref(), pid, COURSE_FILE, head).await?;
    let mut row = app
        .store
        .course_plan(pid, iid)
        .await
        .map_err(retry)?
        .unwrap_or_default();
    if !force && row.sha == head {
        return Ok(()); // this head is planned already (a replayed or repeated event)
    }
    if !force {
        // Only merge requests that change the course file or its Containerfile.
        let before = file_at(as_owner.as_ref(), pid, COURSE_FILE, target_branch).await?;
        let build_file = file
            .as_deref()
            .and_then(|f| courses::parse(f).ok())
            .and_then(|c| match c.environment.source {
                ImageSource::Build(b) => Some(b),
                ImageSource::Image(_) => None,
            });
        let build_changed = match &build_file {
            Some(b) => {
                file_at(as_owner.as_ref(), pid, b, head).await?
                    != file_at(as_owner.as_ref(), pid, b, target_branch).await?
            }
            None => false,
        };
        if before == file && !build_changed && row.note_id.is_none() {
            return Ok(());
        }
    }
    let short = &head[..head.len().min(8)];
    let title = |course: &str| {
        render(
            Lang::En,
            "course.plan_title",
            &[("course", course.to_string()), ("sha", short.to_string())],
        )
    };
    row.sha = head.to_string();
    let course = match checked(file.as_deref()) {
        Ok(c) => c,
        Err(why) => {
            let body = format!("{}\n\n{why}", title("?"));
            post_plan(app, as_owner.as_ref(), pid, iid, &mut row, &body).await?;
            set_status(
                as_owner.as_ref(),
                pid,
                head,
                false,
                &render(Lang::En, "course.status_bad_file", &[]),
            )
            .await;
            return Ok(());
        }
    };
    let mut problems = Vec::new();
    if let Some(other) = id_taken(app, pid, &course.id).await? {
        problems.push(render(
            Lang::En,
            "course.id_taken",
            &[("course", course.id.clone()), ("project", other)],
        ));
    }
    let applied = applied_course(app, pid).await?;
    let changes = plan::changes(applied.as_ref().map(|(_, c)| c), &course);
    let fit = plan::capacity(&course, course.max_containers, &rooms(app));
    let next = plan::next_lecture_line(&course, app.now());
    let compose = |build: &str, problems: &[String]| {
        let mut body = format!(
            "{}\n\n{}\n{}\n\n{}\n\n{}",
            title(&course.id),
            render(
                Lang::En,
                "course.plan_against",
                &[(
                    "version",
                    applied
                        .as_ref()
                        .map(|(v, _)| format!("version {}", v.version))
                        .unwrap_or_else(|| "nothing yet".into())
                )]
            ),
            table(&changes),
            render(
                Lang::En,
                "course.plan_build",
                &[("build", build.to_string())]
            ),
            render(
                Lang::En,
                "course.plan_capacity",
                &[
                    ("capacity", fit_line(&course, &fit)),
                    ("next", next.clone())
                ]
            ),
        );
        if !problems.is_empty() {
            body.push_str(&format!(
                "\n\n{}",
                render(
                    Lang::En,
                    "course.plan_problems",
                    &[(
                        "problems",
                        problems
                            .iter()
                            .map(|p| format!("- {p}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )]
                )
            ));
        }
        body
    };
    let queued = match &course.environment.source {
        ImageSource::Build(f) => render(Lang::En, "course.build_queued", &[("file", f.clone())]),
        ImageSource::Image(i) => format!("`{i}`"),
    };
    post_plan(
        app,
        as_owner.as_ref(),
        pid,
        iid,
        &mut row,
        &compose(&queued, &problems),
    )
    .await?;
    let build_line = match resolve_image(
        app,
        project,
        as_owner.as_ref(),
        &course,
        head,
        &format!("mr-{iid}-{short}"),
    )
    .await
    {
        Ok(r) => {
            row.image = Some(r.image.clone());
            row.digest = Some(r.digest.clone());
            r.line
        }
        Err(why) => {
            problems.push(why.clone());
            render(Lang::En, "course.build_failed", &[("reason", why)])
        }
    };
    if !fit.fits() {
        problems.push(fit_line(&course, &fit));
    }
    post_plan(
        app,
        as_owner.as_ref(),
        pid,
        iid,
        &mut row,
        &compose(&build_line, &problems),
    )
    .await?;
    let ok = problems.is_empty();
    let description = if ok {
        render(
            Lang::En,
            "course.status_ready",
            &[("course", course.id.clone())],
        )
    } else {
        render(
            Lang::En,
            "course.status_problems",
            &[
                ("course", course.id.clone()),
                ("problems", problems.len().to_string()),
            ],
        )
    };
    set_status(as_owner.as_ref(), pid, head, ok, &description).await;
    Ok(())
}

async fn set_status(as_owner: &dyn Gitlab, project: u64, sha: &str, ok: bool, description: &str) {
    let state = if ok {
        CommitStatusState::Success
    } else {
        CommitStatusState::Failed
    };
    if let Err(e) = as_owner
        .commit_status(project, sha, STATUS, state, description, None)
        .await
    {
        tracing::warn!(error = %client::explain(&e), "course commit status");
    }
}

/// Who a course repository (`courses/ID`) is shared with: its students' and instructors'
/// groups, from the applied course file (nobody for anything else).
pub async fn groups_of_repository(app: &App, repository: &str) -> Vec<String> {
    let Some(id) = repository.strip_prefix("courses/") else {
        return Vec::new();
    };
    match app.store.current_course(id).await {
        Ok(Some(v)) => courses::parse(&v.file)
            .map(|c| c.students.into_iter().chain(c.instructors).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The course's image for one commit, built or checked.
struct Resolved {
    /// What blades pull and containers run.
    image: String,
    digest: String,
    /// For the plan and the applied comment.
    line: String,
}

/// A hash of the repository's tree as unpacked: the same sources build the same image, so a
/// revert reuses the version it returns to.
fn source_hash(top: &std::path::Path) -> String {
    let mut files = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(_) => files.push(p),
                    Err(_) => {}
                }
            }
        }
    }
    files.sort();
    let mut h = sha2::Sha256::new();
    for f in files {
        let rel = f
            .strip_prefix(top)
            .unwrap_or(&f)
            .to_string_lossy()
            .to_string();
        // The course file itself does not change the image.
        if rel == COURSE_FILE {
            continue;
        }
        h.update(rel.as_bytes());
        h.update([0]);
        if let Ok(meta) = std::fs::symlink_metadata(&f) {
            if meta.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(&f)
                        .map(|t| t.to_string_lossy().to_string())
                        .unwrap_or_default()
                        .as_bytes(),
                );
            } else {
                h.update(std::fs::read(&f).unwrap_or_default());
            }
        }
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The image for `course` at `sha`: a checked reference for `image =`; for `build =`, the
/// course repository built in the course's own build store and pushed to `courses/ID:tag`,
/// unless an earlier version or plan built the same sources.
async fn resolve_image(
    app: &Arc<App>,
    project: &ProjectRow,
    as_owner: &dyn Gitlab,
    course: &Course,
    sha: &str,
    tag: &str,
) -> Result<Resolved, String> {
    let instructor = app
        .directory
        .lookup(&project.owner)
        .await
        .ok()
        .flatten()
        .ok_or("the account that enabled the course is gone; enable it again")?;
    let registry_host = app.registry.as_ref().map(|r| r.cfg.host.as_str());
    match &course.environment.source {
        ImageSource::Image(i) => {
            let img = crate::images::resolve_with(
                i,
                &instructor.uid,
                &app.cfg.images.allow,
                registry_host,
            )
            .map_err(|e| e.to_string())?;
            if !super::containers::may_use_image(app, &instructor, &img)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "`{i}` is not an image the course's instructors may use"
                ));
            }
            Ok(Resolved {
                image: img.reference.clone(),
                digest: img.reference.clone(),
                line: format!("`{}`", img.reference),
            })
        }
        ImageSource::Build(file) => {
            let g = app.cfg.gitlab.as_ref().ok_or("GitLab is not configured")?;
            let reg = app
                .registry
                .as_ref()
                .ok_or("course images need the department registry ([registry])")?;
            let limits = app.cfg.limits_for(instructor.role);
            let co =
                super::builds::checkout(app, as_owner, project.project_id, sha, &limits).await?;
            let source = source_hash(&co.top);
            let repo = courses::repository(&course.id);
            // The same sources, built before (a plan of this commit, an earlier version).
            if let Some(d) = app
                .store
                .course_build_of_source(&course.id, &source)
                .await
                .map_err(|e| e.to_string())?
            {
                if reg
                    .client()
                    .manifest(&repo, &d)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return Ok(Resolved {
                        image: format!("{}/{repo}@{d}", reg.cfg.host),
                        line: render(Lang::En, "course.build_reused", &[("digest", d.clone())]),
                        digest: d,
                    });
                }
            }
            let path = co.top.join(file);
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                return Err(format!(
                    "no `{file}` in the course repository at {}",
                    &sha[..sha.len().min(8)]
                ));
            }
            let blade = app.cfg.blades.first().ok_or("no blade to build on")?;
            let full = format!("{}/{repo}:{tag}", reg.cfg.host);
            let started = std::time::Instant::now();
            let id = (uuid::Uuid::new_v4().as_u128() as i64).unsigned_abs() as i64 % 1_000_000_000
                + 1_000_000_000;
            let held = super::builds::build_in_store(
                app,
                g,
                super::builds::InStore {
                    id,
                    store_owner: &format!("course-{}", course.id),
                    account: &instructor,
                    blade,
                    top: &co.top,
                    file: &path,
                    tags: vec![full.clone()],
                    limits: &limits,
                },
            )
            .await?;
            let cred = reg.push_credential(crate::registry::SERVICE, &repo);
            held.store
                .push(&full, crate::registry::SERVICE, &cred, !reg.cfg.insecure)
                .await
                .map_err(|e| e.to_string())?;
            let crate::registry::client::Manifest { digest, size, .. } = reg
                .client()
                .manifest(&repo, tag)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the registry does not have the pushed image")?;
            app.store
                .record_course_build(&course.id, &source, &digest)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Resolved {
                image: format!("{}/{repo}@{digest}", reg.cfg.host),
                line: render(
                    Lang::En,
                    "course.build_done",
                    &[
                        ("image", full),
                        ("digest", digest.clone()),
                        ("size", crate::containers::fmt_size(size)),
                        ("seconds", format!("{:.0}", started.elapsed().as_secs_f64())),
                    ],
                ),
                digest,
            })
        }
    }
}

/// Pull the course image on every blade not drained: (blade, ready or why not).
pub async fn prepare_blades(
    app: &App,
    course: &str,
    image: &str,
    digest: &str,
) -> Vec<(String, Result<(), String>)> {
    let drained = app.store.drained().await.unwrap_or_default();
    let mut out = Vec::new();
    for (b, client) in &app.blades {
        if drained.contains(&b.name) {
            continue;
        }
        let r = async {
            if client.image_inspect(image).await.is_ok() {
                return Ok(());
            }
            match (
                app.registry.as_ref(),
                super::containers::registry_repository(app, image),
            ) {
                (Some(reg), Some(repo)) => {
                    let cred = reg.pull_credential(crate::registry::SERVICE, &repo);
                    client
                        .pull(image, crate::registry::SERVICE, &cred, !reg.cfg.insecure)
                        .await
                        .map_err(|e| e.to_string())
                }
                _ => client
                    .pull(image, "", "", true)
                    .await
                    .map_err(|e| e.to_string()),
            }
        }
        .await;
        if r.is_ok() {
            let _ = app.store.set_course_blade(course, &b.name, digest).await;
        }
        out.push((b.name.clone(), r));
    }
    out
}

fn readiness_lines(r: &[(String, Result<(), String>)]) -> String {
    r.iter()
        .map(|(b, r)| match r {
            Ok(()) => format!("- `{b}`: {}", render(Lang::En, "course.blade_ready", &[])),
            Err(e) => format!(
                "- `{b}`: {} ({})",
                render(Lang::En, "course.blade_not_ready", &[]),
                e.chars().take(200).collect::<String>()
            ),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Everyone who teaches the course (the members of its instructor groups).
async fn instructors(app: &App, c: &Course) -> Vec<String> {
    let mut v = Vec::new();
    for g in &c.instructors {
        v.extend(app.directory.members(g).await.unwrap_or_default());
    }
    v.sort();
    v.dedup();
    v
}

/// Apply a merged commit: build (or reuse), tag `current` and `vN`, pull on every blade,
/// record the version, comment on the merge request, tell the instructors. On failure the
/// previous version stays in use and the merge request says why.
pub async fn apply(
    app: &Arc<App>,
    project: &ProjectRow,
    iid: Option<u64>,
    sha: &str,
    head: &str,
) -> Result<(), TaskError> {
    let api = api(app)?;
    let as_owner = api.for_user(&project.gitlab_user);
    let pid = project.project_id;
    let say = |body: String| {
        let as_owner = as_owner.clone();
        async move {
            if let Some(iid) = iid {
                if let Err(e) = as_owner.create_mr_note(pid, iid, &body).await {
                    tracing::warn!(error = %client::explain(&e), "course apply comment");
                }
            }
        }
    };
    let applied = applied_course(app, pid).await?;
    let previous = applied
        .as_ref()
        .map(|(v, _)| format!(" (version {}, `{}`)", v.version, v.digest))
        .unwrap_or_default();
    let fail = |reason: String| {
        render(
            Lang::En,
            "course.apply_failed",
            &[("reason", reason), ("previous", previous.clone())],
        )
    };
    let text = file_at(as_owner.as_ref(), pid, COURSE_FILE, sha).await?;
    let course = match checked(text.as_deref()) {
        Ok(c) => c,
        Err(why) => {
            say(fail(why)).await;
            return Ok(());
        }
    };
    let text = text.unwrap_or_default();
    if let Some(other) = id_taken(app, pid, &course.id).await? {
        say(fail(render(
            Lang::En,
            "course.id_taken",
            &[("course", course.id.clone()), ("project", other)],
        )))
        .await;
        return Ok(());
    }
    // The plan's build of this head, or the same sources built before, is reused.
    let tag = &sha[..sha.len().min(12)];
    let resolved = match resolve_image(app, project, as_owner.as_ref(), &course, sha, tag).await {
        Ok(r) => r,
        Err(why) => {
            say(fail(render(
                Lang::En,
                "course.build_failed",
                &[("reason", why)],
            )))
            .await;
            audit(
                app,
                &project.owner,
                &course.id,
                "failed",
                &format!("at {head}"),
            )
            .await;
            return Ok(());
        }
    };
    let next_version = app
        .store
        .course_versions(pid)
        .await
        .map_err(retry)?
        .first()
        .map(|v| v.version + 1)
        .unwrap_or(1);
    if let (Some(reg), ImageSource::Build(_)) = (app.registry.as_ref(), &course.environment.source)
    {
        let repo = courses::repository(&course.id);
        for t in ["current".to_string(), format!("v{next_version}")] {
            reg.client()
                .tag(&repo, &resolved.digest, &t)
                .await
                .map_err(retry)?;
        }
    }
    let ready = prepare_blades(app, &course.id, &resolved.image, &resolved.digest).await;
    let v = app
        .store
        .apply_course_version(CourseVersion {
            project_id: pid,
            version: 0,
            course: course.id.clone(),
            sha: sha.to_string(),
            file: text.clone(),
            image: resolved.image.clone(),
            digest: resolved.digest.clone(),
            mr_iid: iid,
            applied_by: project.owner.clone(),
            applied_at: 0,
        })
        .await
        .map_err(retry)?;
    let n_ready = ready.iter().filter(|(_, r)| r.is_ok()).count();
    // `sif = true`: the SIF for `/job submit --course` is made now, not at the first job
    // (content-addressed: every student's job then finds it converted).
    if course.environment.sif && app.cfg.slurm.is_some() {
        let target = crate::store::queue::ReplyTarget::to_user(&project.owner, "/course", "sif");
        let _ = super::enqueue(
            app,
            super::tasks::Task::Sif {
                image: resolved.image.clone(),
                typed: format!("course {}", course.id),
            },
            &project.owner,
            &format!("course-{}-v{}-sif", course.id, v.version),
            Some(target),
        )
        .await;
    }
    say(render(
        Lang::En,
        "course.applied",
        &[
            ("course", course.id.clone()),
            ("version", v.version.to_string()),
            ("image", resolved.image.clone()),
            ("digest", resolved.digest.clone()),
            ("blades", readiness_lines(&ready)),
        ],
    ))
    .await;
    let dm = render(
        Lang::En,
        "course.applied_dm",
        &[
            ("course", course.id.clone()),
            ("version", v.version.to_string()),
            ("digest", resolved.digest.clone()),
            ("ready", n_ready.to_string()),
            ("total", ready.len().to_string()),
        ],
    );
    for uid in instructors(app, &course).await {
        app.notifier
            .notice(
                &uid,
                &dm,
                serde_json::json!({"shisa": {"notice": "course_applied", "course": course.id}}),
            )
            .await;
    }
    audit(
        app,
        &project.owner,
        &course.id,
        "ok",
        &format!("version {} {} at {sha}", v.version, resolved.digest),
    )
    .await;
    Ok(())
}

async fn audit(app: &App, actor: &str, course: &str, outcome: &str, detail: &str) {
    let _ = app
        .store
        .audit(NewAudit {
            request_id: None,
            actor,
            role: "",
            action: "course.apply",
            resource: Some(&format!("course:{course}")),
            outcome,
            detail: Some(detail),
        })
        .await;
}

/// One pass of the lecture scheduler at `now`: for each course whose next lecture starts
/// within its `ready_before` (and a few minutes more to prepare), every serving blade gets
/// the current image again if it lost it; once per lecture the instructors get a readiness
/// line. Returns the lines sent.
pub async fn readiness_tick(app: &Arc<App>, now: i64) -> anyhow::Result<Vec<String>> {
    let mut sent = Vec::new();
    for v in app.store.current_courses().await? {
        let Ok(c) = courses::parse(&v.file) else {
            continue;
        };
        if c.stop_at_end {
            if let Err(e) = lecture_end(app, &c, now).await {
                tracing::warn!(course = %c.id, error = %e, "course end of lecture");
            }
        }
        let Some(slot) = c.next_lecture(now) else {
            continue;
        };
        // Start preparing ready_before plus 10 minutes ahead, so it is ready by ready_before.
        let lead = c.ready_before as i64 + 600;
        if now < slot.start - lead || now >= slot.end {
            continue;
        }
        let ready = prepare_blades(app, &c.id, &v.image, &v.digest).await;
        let n_ready = ready.iter().filter(|(_, r)| r.is_ok()).count();
        // The line goes once per lecture, when it is ready or at ready_before regardless.
        let due = n_ready == ready.len() || now >= slot.start - c.ready_before as i64;
        if !due
            || !app
                .store
                .first_course_notice(&c.id, slot.start, "ready")
                .await?
        {
            continue;
        }
        let missing: Vec<String> = ready
            .iter()
            .filter_map(|(b, r)| {
                r.as_ref()
                    .err()
                    .map(|e| format!("{b}: {}", e.chars().take(120).collect::<String>()))
            })
            .collect();
        let line = render(
            Lang::En,
            "course.readiness",
            &[
                ("course", c.id.clone()),
                ("time", courses::schedule::clock(&slot, &c.timezone)),
                ("ready", n_ready.to_string()),
                ("total", ready.len().to_string()),
                ("seats", c.max_containers.to_string()),
                (
                    "missing",
                    if missing.is_empty() {
                        String::new()
                    } else {
                        format!("; not ready: {}", missing.join("; "))
                    },
                ),
            ],
        );
        for uid in instructors(app, &c).await {
            app.notifier
                .notice(
                    &uid,
                    &line,
                    serde_json::json!({"shisa": {"notice": "course_ready", "course": c.id}}),
                )
                .await;
        }
        sent.push(line);
    }
    Ok(sent)
}

/// `at_end = "stop"`: when a lecture ends, its students are warned that their containers
/// stop after the grace; after it, those still running are stopped (once per lecture).
async fn lecture_end(app: &Arc<App>, c: &Course, now: i64) -> anyhow::Result<()> {
    let grace = c.grace as i64;
    // The lecture that ended within the grace, or within an hour after it.
    let Some(slot) = c.next_lecture(now - grace - 3600) else {
        return Ok(());
    };
    if now < slot.end {
        return Ok(());
    }
    let seats: Vec<_> = app
        .store
        .course_containers(&c.id)
        .await?
        .into_iter()
        .filter(|r| r.state == "running" && r.started_at.is_some_and(|t| t < slot.end))
        .collect();
    if now < slot.end + grace {
        if app
            .store
            .first_course_notice(&c.id, slot.start, "end_warning")
            .await?
        {
            let text = render(
                Lang::En,
                "course.ending",
                &[
                    ("course", c.id.clone()),
                    ("minutes", (c.grace / 60).max(1).to_string()),
                    ("name", c.id.clone()),
                ],
            );
            for r in &seats {
                app.notifier
                    .notice(
                        &r.owner,
                        &text,
                        serde_json::json!({"shisa": {"notice": "course_ending", "course": c.id}}),
                    )
                    .await;
            }
        }
        return Ok(());
    }
    if !app
        .store
        .first_course_notice(&c.id, slot.start, "stopped")
        .await?
    {
        return Ok(());
    }
    for r in &seats {
        let task = super::tasks::Task::Stop(super::tasks::ContainerTask {
            container: r.id,
            actor: "shisa".into(),
            ..Default::default()
        });
        let request =
            super::containers::queue_for_service(app, r, task, "/course", "course-end").await?;
        let _ = app
            .store
            .audit(NewAudit {
                request_id: Some(&request),
                actor: "shisa",
                role: "",
                action: "course.end",
                resource: Some(&format!("container:{}/{}", r.owner, r.name)),
                outcome: "queued",
                detail: Some(&format!("lecture of {} ended", c.id)),
            })
            .await;
    }
    if !seats.is_empty() {
        super::wake(app);
    }
    Ok(())
}

/// The lecture scheduler: a pass every `courses.check_seconds`.
pub fn spawn_readiness(
    app: Arc<App>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = std::time::Duration::from_secs(app.cfg.reconcile.course_check_seconds.max(1));
        loop {
            if let Err(e) = readiness_tick(&app, app.now()).await {
                tracing::warn!(error = %e, "course readiness check failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|v| *v) => return,
            }
        }
    })
}
