//! The message catalogue: every user-facing string lives here, under a key.
//!
//! English is the only language today; a Japanese table can be added beside
//! `EN` with the same keys, and `Lang` chooses. Placeholders are `{name}`.
//!
//! A [`Message`] is any reply from the catalogue (an acknowledgement, a result); a
//! [`UserError`] is an error the user can act on. The error policy is in `error`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
}

/// (key, English text). Keys are grouped by area.
pub static EN: &[(&str, &str)] = &[
    // grammar
    ("grammar.unclosed_quote", "There is an unclosed {quote} quote in your command. Close it, or escape it with a backslash."),
    ("grammar.unknown_subcommand", "`{command} {sub}` is not a command I know.{suggestion} Type `{command} help` to see them all."),
    ("grammar.unknown_flag", "`{flag}` is not an option of `{command} {sub}`.{suggestion} Type `{command} help {sub}` for its options."),
    ("grammar.did_you_mean", " Did you mean `{candidate}`?"),
    ("grammar.missing_value", "`{flag}` needs a value, for example `{flag} {example}`."),
    ("grammar.flag_takes_no_value", "`{flag}` is a switch and takes no value; write just `{flag}`."),
    ("grammar.repeated_flag", "`{flag}` was given more than once; give it once."),
    ("grammar.bad_value", "`{value}` is not a valid value for `{flag}`: {reason}"),
    ("grammar.missing_argument", "`{command} {sub}` needs {arg}. Usage: `{usage}`"),
    ("grammar.too_many_arguments", "`{command} {sub}` got an extra argument `{extra}`. Usage: `{usage}`"),
    ("grammar.no_command_allowed", "`{command} {sub}` does not take a command after `--`. Usage: `{usage}`"),
    ("grammar.conflict", "`{a}` and `{b}` cannot be used together."),
    ("grammar.requires_one_of", "`{command} {sub}` needs one of {options}. Usage: `{usage}`"),
    ("grammar.unknown_help_topic", "There is no `{command} {sub}` to explain.{suggestion} Type `{command} help` to see them all."),
    // values
    ("value.size", "sizes need a unit, like `512M`, `8G` or `1.5G`"),
    ("value.size_zero", "a size must be larger than zero"),
    ("value.duration", "durations look like `30m`, `2h`, `1d`, `1h30m`, or Slurm's `D-HH:MM:SS`"),
    ("value.count", "expected a whole number from {min} to {max}"),
    ("value.cpus", "expected a number of CPUs such as `2` or `0.5` (at most {max})"),
    ("value.gpus", "expected a GPU count such as `1`, or a type and count such as `tesla:2`"),
    ("value.port", "expected a port number from 1 to 65535, optionally followed by `/tcp` or `/udp`"),
    ("value.env", "expected `NAME=value`, where NAME is letters, digits and `_` and does not start with a digit"),
    ("value.name", "names are 1 to 63 lowercase letters, digits and `-`, starting with a letter or digit"),
    ("value.user", "expected a department account name such as `alice`"),
    ("value.group", "expected a group name such as `ai-course`"),
    ("value.image", "expected an image such as `myimg`, `myimg:1` or `bob/myimg:1`"),
    ("value.text", "the text must not contain control characters"),
    ("value.path", "expected a relative path inside your home directory, without `..`"),
    ("value.id", "expected an identifier of letters, digits, `-` and `_`"),
    ("value.choice", "expected one of {choices}"),
    // images
    ("image.invalid", "`{image}` is not an image reference I can use. Write `myimg`, `myimg:1`, `bob/myimg:1` (shared with you) or `localhost/NAME` (the admins' images)."),
    ("image.not_allowed", "`{image}` comes from outside the department and is not on the admins' list of allowed images. Build your own image, or ask {contact} to allow it."),
    ("image.not_found", "There is no image `{image}` on the blade. `/container images` lists yours; `/container templates` has ready-made ones."),
    // containers
    ("limits.request", "You asked for {asked} {what}; one container may have at most {max}. Ask for less."),
    ("limits.total", "That would take you over your limit of {max} {what}. You now hold {holding}. Stop or remove something (`/container ps --all`) first."),
    ("home.unusable", "Your home directory `{home}` cannot be mounted (it must be a directory you own under the department's home base). Ask {contact}."),
    ("container.name_taken_running", "You already have a container called `{name}`, and it is running. Pick another `--name`, or `/container rm --force {name}` first."),
    ("container.name_taken_stopped", "You already have a container called `{name}` ({state}). Use `/container start {name}` to run it again, or `/container rm {name}` to replace it."),
    ("container.no_ports", "No host port is free on `{blade}` right now. Try again later, or ask {contact}."),
    ("container.gpus_busy", "All {total} GPUs on `{blade}` are in use, so your container cannot start again now. Try later, or `/container rm` it and `/container run` a new one, which waits in the queue for a GPU."),
    ("container.no_gpus", "`{blade}` has no GPUs. Leave out `--gpus`, or ask {contact} which blade has them."),
    ("container.env_reserved", "`{name}` is set by shisa and cannot be given with `--env`."),
    ("container.template_unknown", "There is no template `{template}`. Templates: {templates}."),
    ("container.need_image", "Say which image to run, or use `--template`: `/container run myimg`."),
    ("container.not_found", "You have no container called `{name}`. `/container ps --all` lists yours."),
    ("container.only_admins_user", "`--user` is for admins."),
    ("container.started", "Container `{name}` is running on `{blade}` ({image}; {cpus} CPUs, {memory} memory{gpus})."),
    ("container.gpus_shared", ", GPU {devices} shared with other containers"),
    ("container.gpus_exclusive", ", GPU {devices}"),
    ("container.waiting", "`{blade}` has no room right now (CPUs, memory or GPUs in use). Your container `{name}` is number {position} in the queue; I will send you a message when it starts, or if it gives up after {max_wait}. `/container rm {name}` cancels it."),
    ("container.command_not_found", "Container `{name}` could not start: its command is not in the image. Check the command after `--` (or the image's own), then run it again. Nothing was left behind."),
    ("container.stopped", "Container `{name}` is stopped; its GPUs and CPUs are free again. `/container start {name}` runs it again."),
    ("container.already_stopped", "Container `{name}` is not running."),
    ("container.gpu_time_used", "Container `{name}` has used up its GPU time, so it does not start again. `/container rm {name}` it and run a new one."),
    ("container.already_running", "Container `{name}` is already running."),
    ("container.removed", "Container `{name}` is removed; its ports, address and GPUs are free."),
    ("container.running_use_force", "Container `{name}` is running. Stop it first, or use `/container rm --force {name}`."),
    ("container.not_running_exec", "Container `{name}` is not running; `/container start {name}` first."),
    ("container.died", "Your container `{name}` on `{blade}` stopped on its own with exit code {code}{oom}. Last lines of its output:
```
{tail}
```"),
    ("container.died_oom", ", because it ran out of memory (limit {memory}; ask for more with `--memory`)"),
    ("container.died_sigkill", " (killed: SIGKILL, which with a memory limit of {memory} most likely means it ran out of memory; ask for more with `--memory`)"),
    ("container.allocation_ended", "The Slurm allocation that held the GPU of your container `{name}` ended (its time limit, or it was cancelled), so the container was stopped. `/container start {name}` asks Slurm for a GPU again."),
    ("reclaim.warn_remove", "Your container `{name}` has been stopped for a while: it will be removed in {left} (stopped containers go after {after}), and its ports and address with it. To keep it, `/container extend {name}` (at most {max}), or start it again."),
    ("reclaim.warn_lifetime", "Your container `{name}` reaches its longest running time ({after}): it will be stopped in {left}. To keep it running, `/container extend {name}` (at most {max})."),
    ("reclaim.warn_idle", "Your container `{name}` has used no CPU or GPU for a while: it will be stopped in {left} (idle containers stop after {after}). To keep it running, `/container extend {name}` (at most {max}), or use it."),
    ("reclaim.stopped_lifetime", "Your container `{name}` reached its longest running time and was stopped; its CPUs, memory and GPUs are free for others. `/container start {name}` runs it again."),
    ("reclaim.stopped_idle", "Your container `{name}` was idle and was stopped; its CPUs, memory and GPUs are free for others. `/container start {name}` runs it again."),
    ("reclaim.removed", "Your container `{name}` was stopped for long and was removed; its ports and address are free. Your home directory is untouched. `/container run` makes a new one."),
    ("container.wait_gave_up", "Your container `{name}` waited {max_wait} for room on `{blade}` and did not get it, so I gave up; nothing is held for it. Try again later, or ask for fewer `--cpus`, less `--memory` or fewer GPUs."),
    ("container.ps_queued", "queued (#{position} on `{blade}`)"),
    ("container.ps_left_removed", "{left} (then removed)"),
    ("container.ps_left_idle", "{left} (stops if still idle)"),
    ("container.ps_left_lifetime", "{left} (longest run)"),
    ("container.extended", "Container `{name}` will not be reclaimed before {until} (in {left})."),
    ("container.extend_capped", "Container `{name}` will not be reclaimed before {until} (in {left}): that is the most your role allows ({max})."),
    ("container.extend_waiting", "Container `{name}` is {state}: only running or stopped containers are reclaimed, so there is nothing to extend."),
    ("container.expired", "Your GPU container `{name}` reached its maximum lifetime and was stopped so others can use the GPU. `/container start {name}` starts it again."),
    ("container.staff_action", "An admin (`{actor}`) did `{action}` on your container `{name}`."),
    ("container.busy", "Container `{name}` is busy ({state}); try again in a moment."),
    ("container.ps_empty", "You have no containers. Start one with `/container run IMAGE`, or see `/container templates`."),
    ("container.exec_result", "`{cmd}` in `{name}` exited with code {code}{note}:
```
{output}
```"),
    ("container.exec_timeout", "`{cmd}` in `{name}` was still running after {seconds} s and was cut off. Output so far:
```
{output}
```"),
    ("container.logs_cut", "(The output was longer than one message: only its end is shown. Write long output to a file in your home instead.)"),
    ("container.logs_slow", "(Podman could not read all of this output within {seconds} s: it has very long lines. This is what came. Write long output to a file in your home instead.)"),
    ("container.logs", "Last {lines} lines of `{name}`:
```
{output}
```"),
    // blades
    ("blades.none_up", "No blade is available right now (all are down or drained), so nothing was started. Try again in a few minutes; {contact} have been told by the monitoring."),
    ("blades.full", "No blade that has this image is big enough for this request, even when empty. Ask for fewer `--cpus`, less `--memory` or fewer GPUs (`/container blades` shows each blade's size)."),
    ("blades.no_ip_pool", "No blade has an IP pool for `--ip`. Leave it out, or ask {contact}."),
    ("blades.ip_exhausted", "All {total} addresses of `{blade}`'s IP pool are in use. Remove a container of yours that has one (`/container ps`), or ask {contact}."),
    ("blades.ip_exhausted_admin", "All {total} addresses of `{blade}`'s IP pool are in use: {holders}."),
    ("blades.unknown", "There is no blade `{blade}`. Blades: {blades}."),
    ("blades.drained", "Blade `{blade}` is drained: no new containers go there (running ones stay). `/container drain --undo {blade}` reverses it."),
    ("blades.undrained", "Blade `{blade}` takes new containers again."),
    ("container.removed_outside", "Your container `{name}` on `{blade}` was removed outside shisa (by hand or by the blade); its ports, address and GPUs are released."),
    // registry
    ("registry.not_configured", "This server has no department registry configured, so there are no registry images, sharing or tokens. Ask {contact}."),
    ("image.only_owner", "`{image}` is shared with you, but only its owner can change or delete it."),
    ("image.unknown_grantee", "`{who}` is neither a user nor a group I know. Give a user name, a group, or `all`."),
    ("image.shared", "`{image}` is now shared with: {with}. They can run it as `{image}` and pull it from the registry."),
    ("image.unshared", "`{image}` is now shared with: {with}."),
    ("image.removed", "Deleted `{image}` (tags: {tags}) from the registry. The space is reclaimed at the next garbage collection."),
    ("token.new", "New registry token {id}, valid for {lifetime}. It is shown only this once; copy it now:\n```\npodman login {host} -u {user} -p {secret}\n```\n`/container token revoke {id}` disables it."),
    ("token.too_many", "You already have {held} active registry tokens, the most you may. Revoke one you no longer use (`/container token list`, then `/container token revoke ID`)."),
    ("token.revoked", "Token {id} is revoked; logins with it fail from now on."),
    ("token.unknown", "You have no active token {id}. `/container token list` shows yours."),
    ("token.which", "Say which token: `/container token revoke ID` (the ids are in `/container token list`)."),
    ("token.none", "You have no registry tokens. `/container token new` makes one for `podman login`."),
    ("registry.over_quota", "Your images use {usage} of your {limit} registry quota, so pushing is paused. Delete images you no longer need (`/container images`, `/container rmi IMAGE:TAG`); pushing works again once you are under the quota."),
    // sif
    ("sif.ready", "`{image}` as a Singularity image ({size}, {how}):\n- on the cluster: `{path}`\n- download ({minutes} minutes): {url}"),
    ("build.no_gitlab", "Builds from GitLab are not set up on this server. Ask {contact}."),
    ("build.no_gitlab_account", "shisa finds no GitLab account linked to yours (GitLab links it when you sign in to GitLab with your department account). Sign in to GitLab once, then try again."),
    ("build.log_cut", "(The build printed {size}; only its end is shown.)"),
    ("build.archive_too_large", "The repository is larger than your limit of {limit} for a build (as GitLab sends it). Keep data and models out of the repository (Git LFS, or a download in the Containerfile), or ask your instructor."),
    ("build.unpacked_too_large", "Unpacked, the repository is larger than your limit of {limit} for a build. Keep data and models out of the repository, or ask your instructor."),
    ("build.not_enabled", "You pushed a Containerfile to `{project}`, but shisa does not build that project yet. A maintainer can switch it on with `/container build enable {project}`; then every push that changes the Containerfile builds an image under your name."),
    ("build.project_missing", "`/container build {action}` needs the GitLab project, like `/container build {action} alice/mymodel`."),
    ("build.project_unreachable", "I cannot use the GitLab project `{project}` for you: {reason}. Check the path (`group/project`) and that you are a member."),
    ("build.project_is_course", "`{project}` is a course project: shisa builds it when a merge request is merged, not on each push. `/course status` shows it; use another project for your own image."),
    ("build.not_maintainer", "Only a Maintainer or Owner of `{project}` can switch its builds on or off. Ask one of them, or fork the project."),
    ("build.enabled_runner", "`{project}` has its own GitLab runner now, started only when a job is waiting. Add these two lines to its `.gitlab-ci.yml`:\n```yaml\ninclude:\n  - remote: \"{url}/ci-templates/container-image.gitlab-ci.yml\"\n```\nEach pipeline then pushes `{image}` (and `:latest`); you will get a message when it ends."),
    ("build.runner_broken", "The GitLab runner of `{project}` no longer works (GitLab does not accept its token). Switch it on again with `/container build enable {project} --runner`."),
    ("build.enabled", "Builds are on for `{project}`. Every push that changes the Containerfile builds `{image}` (and `:latest`); you will get a message when each one ends, and the commit shows a `shisa/image` status."),
    ("build.not_enabled_here", "`{project}` has no shisa builds to change (or they are not yours). See `/container build status`."),
    ("build.disabled", "Builds are off for `{project}`; its webhook is removed."),
    ("build.queued", "Build {id} of `{project}` at `{ref}` is queued. You will get a message when it ends."),
    ("build.none", "You have no builds yet. Switch a GitLab project on with `/container build enable group/project`."),
    ("build.succeeded", "Your image from `{project}` at `{sha}` is ready: `{image}` ({size}, digest `{digest}`).\nRun it with `/container run {run}`."),
    ("build.failed", "The image build of `{project}` at `{sha}` failed. The last lines of its log:\n```\n{log}\n```"),
    ("job.no_slurm", "Batch jobs are not set up on this server. Ask {contact}."),
    ("job.bad_path", "`{path}` must be a path inside your home directory, like `jobs/train.sh` (no leading `/`, no `..`)."),
    ("job.no_image", "Say which image the job runs in: `--image myimg:1`, or a template with `--template NAME` (see `/job templates`)."),
    ("job.over_limit", "You asked for {asked} {what}, more than your limit of {limit}. Ask for less, or ask your instructor."),
    ("job.log_cut", "(Only the end of the output is shown: the last 64 KiB.)"),
    ("job.partition", "You may not submit to partition `{partition}`. Yours: {partitions}. Leave out `--partition` for the default, or ask your instructor."),
    ("job.too_many", "You already have {held} jobs queued or running, your limit. Wait for one to end, or cancel one with `/job cancel ID` (`/job ps` lists them)."),
    ("job.gpu_type", "There are no `{type}` GPUs here. Types: {types}."),
    ("job.no_command", "Give the job something to run: `--script PATH` (in your home) or `-- COMMAND ...` at the end."),
    ("job.bad_text", "The job cannot contain that: {reason}. Put complex commands in a script and use `--script`."),
    ("job.dry_run", "The job would be submitted with `sbatch {args}` and this script (nothing was submitted):\n```sh\n{script}```\n{notes}"),
    ("job.none", "You have no jobs. Start one with `/job submit --image IMAGE -- COMMAND`."),
    ("job.not_found", "There is no job `{id}` of yours. See `/job ps --all` for your jobs."),
    ("job.log_empty", "Job {id} has written nothing yet."),
    ("job.log_unreadable", "I cannot read job {id}'s output: {reason}."),
    ("job.already_ended", "Job {id} has already ended ({state})."),
    ("job.cancelled", "Job {id} is cancelled. You will get its last lines when Slurm has stopped it."),
    ("job.slurm_refused", "Slurm refused: {reason}"),
    ("job.slurm_down", "Slurm is not answering right now; nothing was changed. Try again in a minute."),
    ("job.no_dir", "I cannot create the job directory `{dir}` in your home: {reason}."),
    ("job.submitted", "Job {id} (`{name}`) is submitted in `{image}` ({resources}). Its output goes to `{dir}/output.log`; you will get its last lines when it ends.{notes}"),
    ("job.ended", "Job {id} (`{name}`) ended: {state}, exit code {code}, ran {elapsed}. The last lines of its output:\n```\n{log}\n```"),
    ("sif.progress", "Still converting `{image}` after {seconds} s: {size} of squashfs written so far. The link comes when it is done."),
    ("sif.no_local_blade", "Converting needs a blade on shisa's own machine, and none is configured. Ask {contact}."),
    // identity
    ("identity.unknown_user", "Your Mattermost account `{user}` is not linked to a department account, so I cannot act for you. Ask the shisa admins ({contact}) to link it."),
    ("identity.not_ldap", "Your Mattermost account `{user}` does not sign in through the department directory (LDAP), so I cannot tell which department account is yours. Sign in to Mattermost with your department account, or ask {contact}."),
    ("identity.directory_down", "I cannot reach the department directory right now, so I cannot check who you are. Please try again in a minute; if it persists, tell {contact}."),
    // generic
    ("internal.error", "Something went wrong on our side and nothing was changed. If it keeps happening, tell {contact} the reference `{request}`."),
    ("command.unknown_program", "This server does not answer `{command}`; it knows `/container` and `/job`. Ask {contact} to check the slash command's settings."),
    ("command.not_available", "`{command} {sub}` is not available yet on this server. Type `{command} help` to see what you can do today."),
    ("command.forbidden", "`{command} {sub}` is for {role}s only."),
    ("command.accepted", "Working on `{command} {sub}` (request `{request}`); I will reply here when it is done."),
    ("command.failed", "`{command} {sub}` failed: {reason}"),
    ("command.failed_here", "`{command} {sub}` did not work on our side, and nothing was left half-done. Try again in a while; if it keeps failing, tell {contact} the reference `{request}`."),
    ("container.start_failed_here", "Container `{name}` could not start on our side, and nothing was left behind. Try again in a while; if it keeps failing, tell {contact} the reference `{request}`."),
    ("command.gave_up", "`{command} {sub}` (request `{request}`) could not be completed after {attempts} attempts and nothing was left half-done. Please try again later; if it keeps failing, tell {contact} with the request id."),
    ("not_found", "There is no {kind} called `{name}` that you can see."),
    // whoami / info
    ("whoami.text", "You are `{uid}` (uid {uid_number}, gid {gid_number}), role **{role}**, home `{home}`, groups: {groups}."),
    ("info.header", "Blades:"),
    ("info.blade_up", "- `{blade}`: up, Podman {version}, {containers} containers, {images} images"),
    ("info.blade_down", "- `{blade}`: **down** (not answering; the admins can see why)"),
    ("templates.none", "No templates are configured yet. Ask the admins to add `[templates.NAME]` to the configuration."),
    // courses
    ("course.plan_title", "### shisa plan: course `{course}` at `{sha}`"),
    ("course.plan_against", "Against the applied {version}:"),
    ("course.plan_no_changes", "No setting changes against the applied version."),
    ("course.plan_build", "**Image:** {build}"),
    ("course.plan_capacity", "**Capacity:** {capacity}\n\n**Next lecture:** {next}\n\nComment `shisa plan` to plan again. Merging applies it."),
    ("course.plan_problems", "**Not ready to apply:**\n{problems}"),
    ("course.plan_errors", "**`{file}` has errors**; nothing is applied until they are fixed:\n{errors}"),
    ("course.no_course_file", "There is no `{file}` at the top of the repository here. A course project keeps its settings in that file; see the instructors' guide for an example."),
    ("course.id_taken", "The course id `{course}` belongs to another course project (`{project}`). Choose another `id`."),
    ("course.capacity_fits", "{asked} on {blades} blades: fits (room for {room})."),
    ("course.capacity_short", "{asked} on {blades} blades: does **not** fit, room for {room}, {short} short (runs out of {resource}). Lower the per-student resources or `max_containers`, or ask the admins for blades."),
    ("course.build_queued", "building `{file}` (queued); this comment is updated when it is done."),
    ("course.build_done", "built `{image}` in {seconds} s: digest `{digest}`, {size}."),
    ("course.build_reused", "the same sources were built before: digest `{digest}` (reused)."),
    ("course.build_failed", "the image could not be made: {reason}"),
    ("course.apply_failed", "### shisa did not apply this merge\n\n{reason}\n\nThe previous version stays in use{previous}. Fix it in a new merge request."),
    ("course.applied", "### shisa applied course `{course}`, version {version}\n\nImage `{image}`, digest `{digest}`, tagged `current` and `v{version}`.\n\n{blades}"),
    ("course.applied_dm", "Course `{course}` version {version} is applied (digest `{digest}`): {ready}/{total} blades ready."),
    ("course.readiness", "{course} at {time}: {ready}/{total} blades ready, {seats} seats{missing}"),
    ("course.not_found", "There is no course `{course}` that you are in. `/course list` shows your courses."),
    ("course.not_member", "You are not in course `{course}`: it is for the groups {groups}. Ask its instructors to add you, then try again."),
    ("course.full", "Course `{course}` already has its {max} containers running. Try again when someone stops theirs, or ask an instructor to raise `max_containers`."),
    ("course.instructors_only", "Only the instructors of `{course}` (and the admins) can see this. `/course run {course}` starts your own container."),
    ("course.not_instructor", "Only instructors can manage a course project. Ask your instructor, or use `/container build enable` for your own image."),
    ("course.project_builds", "`{project}` has shisa builds switched on; a course project is separate. Switch them off first (`/container build disable {project}`) or use another project."),
    ("course.not_enabled", "`{project}` is not a course project you manage. `/course enable PROJECT` manages one."),
    ("course.enabled", "`{project}` is now a course project. Open a merge request that adds or changes `{file}`: shisa comments a plan on it, and applies it when it is merged."),
    ("course.disabled", "`{project}` is no longer managed by shisa. The course's applied version is no longer offered."),
    ("course.ending", "The lecture of `{course}` has ended: your container `{name}` stops in {minutes} min. Save your work to your home directory; `/course run {course}` starts it again."),
    ("course.job_one_image", "Give either `--course` or `--image`/`--template`, not both: `--course ml101` runs in the course's image."),
    ("course.run_as_defined", "`--course {course}` starts the course's environment as its instructors defined it: leave out the image, template, name and resources (`/container run --course {course}`)."),
    ("course.blade_ready", "ready"),
    ("course.blade_not_ready", "not ready"),
    ("course.blade_drained", "drained"),
    ("course.list_header", "| course | title | next lecture | version |\n|---|---|---|---|"),
    ("course.ps_header", "| student | container | state | blade |\n|---|---|---|---|"),
    ("course.plan_table_header", "| setting | applied | this merge request |\n|---|---|---|"),
    ("course.status_ready", "{course}: ready to apply"),
    ("course.status_problems", "{course}: {problems} problem(s), see the plan comment"),
    ("course.status_bad_file", "the course file is missing or has errors"),
    ("course.list_empty", "You are in no course with a shisa environment yet."),
    ("course.list_hint", "`/course run COURSE` starts your container of one."),
    ("course.list_all_admins", "Only admins can list every course. `/course list` shows yours."),
    ("course.ps_empty", "Nobody runs a container of `{course}` now."),
    ("course.status", "**{course}**: {title}\nVersion {version}, image `{image}` (digest `{digest}`)\n\n| blade | readiness |\n|---|---|\n{blades}\n\nStudents running: {running}, starting: {queued} ({seats} containers of at most {max}).\nNext lecture: {next}"),
    // chat/cli
    ("chat.timeout", "No final reply arrived within {seconds} s."),
];

pub fn lookup(lang: Lang, key: &str) -> Option<&'static str> {
    match lang {
        Lang::En => EN.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
    }
}

/// Render a catalogue entry, substituting `{name}` placeholders.
pub fn render(lang: Lang, key: &str, args: &[(&str, String)]) -> String {
    let Some(template) = lookup(lang, key) else {
        // A missing key is a bug; show the key rather than nothing.
        return key.to_string();
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match args.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// A reply that is not an error: a catalogue key plus its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub key: &'static str,
    pub args: Vec<(&'static str, String)>,
}

impl Message {
    pub fn new(key: &'static str) -> Self {
        Message {
            key,
            args: Vec::new(),
        }
    }
    pub fn arg(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.args.push((name, value.into()));
        self
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(Lang::En, self.key, &self.args))
    }
}

/// A user-facing error: a catalogue key plus its arguments (see `error` for the policy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserError {
    pub key: &'static str,
    pub args: Vec<(&'static str, String)>,
}

impl UserError {
    pub fn new(key: &'static str) -> Self {
        UserError {
            key,
            args: Vec::new(),
        }
    }
    pub fn arg(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.args.push((name, value.into()));
        self
    }
    pub fn render(&self, lang: Lang) -> String {
        render(lang, self.key, &self.args)
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Lang::En))
    }
}

impl std::error::Error for UserError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = EN.iter().map(|(k, _)| *k).collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len());
    }

    #[test]
    fn every_key_used_in_source_exists() {
        // Scan the sources for UserError::new("…") and msg keys; a typo'd key
        // would otherwise only show up as a raw key in someone's chat.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut missing = Vec::new();
        let mut stack = vec![std::path::PathBuf::from(root)];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap() {
                let e = e.unwrap().path();
                if e.is_dir() {
                    stack.push(e);
                } else if e.extension().is_some_and(|x| x == "rs") && !e.ends_with("messages.rs") {
                    let text = std::fs::read_to_string(&e).unwrap();
                    for pat in ["UserError::new(\"", "Message::new(\"", "render_key(\""] {
                        for (i, _) in text.match_indices(pat) {
                            let rest = &text[i + pat.len()..];
                            let key = &rest[..rest.find('"').unwrap()];
                            if lookup(Lang::En, key).is_none() {
                                missing.push(format!("{}: {key}", e.display()));
                            }
                        }
                    }
                    // `render(Lang::En, "key", …)`, however it is wrapped.
                    for (i, _) in text.match_indices("Lang::En,") {
                        let rest = text[i + "Lang::En,".len()..].trim_start();
                        if let Some(r) = rest.strip_prefix('"') {
                            let key = &r[..r.find('"').unwrap()];
                            if lookup(Lang::En, key).is_none() {
                                missing.push(format!("{}: {key}", e.display()));
                            }
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "keys missing from the catalogue: {missing:?}"
        );
    }

    #[test]
    fn placeholders() {
        let s = render(
            Lang::En,
            "grammar.missing_value",
            &[("flag", "--memory".into()), ("example", "8G".into())],
        );
        assert_eq!(s, "`--memory` needs a value, for example `--memory 8G`.");
    }
}
