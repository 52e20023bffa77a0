//! One slash command, from verified form to reply.

use std::sync::Arc;
use std::time::Instant;

use crate::app::App;
use crate::commands::{self, BuildAction, Command, Invocation, Parsed, Program};
use crate::identity::linking::{LinkError, Linker};
use crate::identity::Account;
use crate::mattermost::slash::{acceptable_response_url, SlashForm};
use crate::mattermost::Reply;
use crate::messages::{render, Lang, UserError};
use crate::store::audit::NewAudit;
use crate::store::queue::ReplyTarget;

pub async fn handle(app: &Arc<App>, form: SlashForm, request_id: &str) -> Reply {
    let started = Instant::now();
    let label = form.command.trim_start_matches('/').to_string();
    let reply = match handle_inner(app, &form, request_id).await {
        Ok(r) => r,
        Err(e) => {
            let e = crate::error::internal(
                "internal.error",
                request_id,
                &app.cfg.mattermost.contact,
                &format!("{e:?}"),
            );
            Reply::new(request_id, e.to_string(), true)
        }
    };
    app.metrics
        .command_latency(&label, started.elapsed().as_secs_f64());
    reply
}

async fn handle_inner(app: &Arc<App>, form: &SlashForm, request_id: &str) -> anyhow::Result<Reply> {
    let contact = app.cfg.mattermost.contact.clone();
    let Some(program) = Program::from_slash(&form.command) else {
        let e = UserError::new("command.unknown_program")
            .arg("command", form.command.chars().take(40).collect::<String>())
            .arg("contact", contact);
        return Ok(Reply::new(request_id, e.to_string(), true));
    };
    let linker = Linker {
        mode: app.cfg.mattermost.linking,
        store: &app.store,
        directory: app.directory.as_ref(),
        mattermost: app.mattermost.as_ref(),
        contact: &app.cfg.mattermost.contact,
    };
    let account = match linker.resolve(&form.user_id, &form.user_name).await {
        Ok(a) => a,
        Err(LinkError::User(e)) => {
            app.store
                .audit(NewAudit {
                    request_id: Some(request_id),
                    actor: &format!("mattermost:{}", form.user_id),
                    role: "",
                    action: "identify",
                    resource: None,
                    outcome: "denied",
                    detail: Some(e.key),
                })
                .await?;
            return Ok(Reply::new(request_id, e.to_string(), true));
        }
        Err(LinkError::Internal(e)) => return Err(e),
    };
    if let Err(e) = crate::identity::homes::ensure_home(&account, &app.cfg.data_dir) {
        tracing::warn!(uid = %account.uid, error = %e, "could not create the home directory");
    }
    let audit_res = |action: String,
                     outcome: &'static str,
                     detail: Option<String>,
                     resource: Option<String>| {
        let app = app.clone();
        let account = account.clone();
        let request_id = request_id.to_string();
        async move {
            app.store
                .audit(NewAudit {
                    request_id: Some(&request_id),
                    actor: &account.uid,
                    role: account.role.as_str(),
                    action: &action,
                    resource: resource.as_deref(),
                    outcome,
                    detail: detail.as_deref(),
                })
                .await
        }
    };
    let audit = |action: String, outcome: &'static str, detail: Option<String>| {
        audit_res(action, outcome, detail, None)
    };
    let parsed = match commands::parse(program, &form.text) {
        Ok(p) => p,
        Err(e) => {
            audit(
                format!("{}.?", label_of(program)),
                "rejected",
                Some(e.key.to_string()),
            )
            .await?;
            return Ok(Reply::new(request_id, e.to_string(), true));
        }
    };
    let inv = match parsed {
        Parsed::Help { program, topic } => {
            audit(format!("{}.help", label_of(program)), "ok", None).await?;
            return Ok(Reply::new(
                request_id,
                commands::help_text(program, topic),
                true,
            ));
        }
        Parsed::Invocation(inv) => inv,
    };
    let action = format!("{}.{}", label_of(program), inv.sub);
    let Some(command) = Command::of(&inv) else {
        audit(action, "unavailable", None).await?;
        let e = UserError::new("command.not_available")
            .arg("command", program.slash())
            .arg("sub", inv.sub);
        return Ok(Reply::new(request_id, e.to_string(), true));
    };
    use crate::commands::typed::ContainerCommand as C;
    use crate::commands::typed::JobCommand as J;
    match command {
        Command::Container(C::Whoami) | Command::Job(J::Whoami) => {
            audit(action, "ok", None).await?;
            Ok(Reply::new(request_id, whoami(&account), true))
        }
        Command::Container(C::Templates) | Command::Job(J::Templates) => {
            audit(action, "ok", None).await?;
            Ok(Reply::new(request_id, templates(app, program), true))
        }
        Command::Container(
            c @ (C::Run(_)
            | C::Ps(_)
            | C::Logs { .. }
            | C::Exec { .. }
            | C::Stop(_)
            | C::Start(_)
            | C::Extend { .. }
            | C::Rm { .. }
            | C::Inspect(_)),
        ) => {
            let target = reply_target(app, form, &account, program, &inv);
            let h = super::containers::handle(app, &account, c, target, request_id).await?;
            audit_res(action, h.outcome, None, h.resource).await?;
            Ok(h.reply)
        }
        Command::Container(
            c @ (C::Images { .. }
            | C::Share { .. }
            | C::Unshare { .. }
            | C::Rmi { .. }
            | C::Token(_)),
        ) => {
            let h = super::images::handle(app, &account, c, request_id).await?;
            audit_res(action, h.outcome, None, h.resource).await?;
            Ok(h.reply)
        }
        Command::Container(C::Sif { image }) => {
            let target = reply_target(app, form, &account, program, &inv);
            let h = super::sif::handle(app, &account, &image, target, request_id).await?;
            audit_res(action, h.outcome, None, h.resource).await?;
            Ok(h.reply)
        }
        Command::Container(C::Blades) => {
            audit(action, "ok", None).await?;
            Ok(Reply::new(
                request_id,
                super::blades::blades(app).await?,
                true,
            ))
        }
        Command::Container(C::Drain { blade, undo }) => {
            let r = super::blades::drain(app, &account, &blade, undo).await?;
            let blade = Some(format!("blade:{blade}"));
            match r {
                Ok(t) => {
                    audit_res(action, "ok", undo.then(|| "undo".to_string()), blade).await?;
                    Ok(Reply::new(request_id, t, true))
                }
                Err(e) => {
                    audit_res(action, "denied", Some(e.key.to_string()), blade).await?;
                    Ok(Reply::new(request_id, e.to_string(), true))
                }
            }
        }
        Command::Course(c) => {
            let target = reply_target(app, form, &account, program, &inv);
            let h = super::courses::handle(app, &account, c, target, request_id).await?;
            audit_res(action, h.outcome, None, h.resource).await?;
            Ok(h.reply)
        }
        Command::Job(j) => {
            let target = reply_target(app, form, &account, program, &inv);
            let h = super::jobs::handle(app, &account, j, target, request_id).await?;
            audit_res(action, h.outcome, None, h.resource).await?;
            Ok(h.reply)
        }
        Command::Container(C::Build(b)) => {
            let project = match &b {
                BuildAction::Status => None,
                BuildAction::Enable { project, .. }
                | BuildAction::Disable { project }
                | BuildAction::Run { project, .. } => {
                    project.as_ref().map(|p| format!("gitlab:{p}"))
                }
            };
            match super::builds::handle(app, &account, &b).await? {
                Ok(t) => {
                    audit_res(action, "ok", Some(b.name().to_string()), project).await?;
                    Ok(Reply::new(request_id, t, true))
                }
                Err(e) => {
                    audit_res(action, "denied", Some(e.key.to_string()), project).await?;
                    Ok(Reply::new(request_id, e.to_string(), true))
                }
            }
        }
        Command::Container(C::Info) => {
            let target = reply_target(app, form, &account, program, &inv);
            // In the database before the acknowledgement goes out.
            crate::work::enqueue(
                app,
                crate::work::tasks::Task::Info {},
                &account.uid,
                request_id,
                Some(target),
            )
            .await?;
            audit(action, "queued", None).await?;
            let ack = crate::messages::Message::new("command.accepted")
                .arg("command", program.slash())
                .arg("sub", inv.sub)
                .arg("request", request_id);
            Ok(Reply::new(request_id, ack.to_string(), false))
        }
    }
}

fn label_of(p: Program) -> &'static str {
    match p {
        Program::Container => "container",
        Program::Job => "job",
        Program::Course => "course",
    }
}

fn reply_target(
    app: &App,
    form: &SlashForm,
    account: &Account,
    program: Program,
    inv: &Invocation,
) -> ReplyTarget {
    let response_url = form
        .response_url
        .clone()
        .filter(|u| acceptable_response_url(u, app.cfg.mattermost.url.as_deref()));
    if form.response_url.is_some() && response_url.is_none() {
        tracing::warn!("ignoring a response_url that does not point at the configured Mattermost");
    }
    ReplyTarget {
        response_url,
        channel_id: Some(form.channel_id.clone()).filter(|c| !c.is_empty()),
        mm_user_id: Some(form.user_id.clone()),
        uid: account.uid.clone(),
        command: program.slash().to_string(),
        sub: inv.sub.to_string(),
    }
}

fn whoami(a: &Account) -> String {
    let groups = if a.groups.is_empty() {
        "(none)".to_string()
    } else {
        a.groups.join(", ")
    };
    render(
        Lang::En,
        "whoami.text",
        &[
            ("uid", a.uid.clone()),
            ("uid_number", a.uid_number.to_string()),
            ("gid_number", a.gid_number.to_string()),
            ("role", a.role.as_str().to_string()),
            ("home", a.home.display().to_string()),
            ("groups", groups),
        ],
    )
}

fn templates(app: &App, program: Program) -> String {
    if app.cfg.templates.is_empty() {
        return render(Lang::En, "templates.none", &[]);
    }
    let mut out = String::from("| template | image | CPUs | memory | GPUs | ");
    out.push_str(if program == Program::Job {
        "time | comment |\n|---|---|---|---|---|---|---|\n"
    } else {
        "ports | comment |\n|---|---|---|---|---|---|---|\n"
    });
    for (name, t) in &app.cfg.templates {
        let extra = if program == Program::Job {
            t.time
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        } else {
            t.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{name}` | `{}` | {} | {} | {} | {} | {} |\n",
            t.image,
            t.cpus.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            t.memory
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "-".into()),
            t.gpus,
            extra,
            t.comment.replace('|', "/")
        ));
    }
    out
}
