//! Reconcile: decide from the run alone (contract::decide) and start,
//! resume, stop or finish its task. Foreign runs are dropped at once; a run
//! of ours that cannot be read fails with a reason instead of stalling.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::EventType;
use tracing::{debug, info, warn};

use super::owner::{self, OWNER_TTL, Owner};
use super::pvcs::{PvcReadError, resolve_pvcs};
use super::status::{StatusWriter, Update, unless_done};
use super::task::{Extra, StopCause};
use super::{Context, Error};
use crate::api::step::{API_VERSION, KIND};
use crate::api::{Flavor, RbdMirrorStep, RbdMirrorStepSpec, TektonRun};
use crate::contract::{self, AttemptEnd, Decision};
use crate::step::outcome::results;
use crate::step::pvc::{self, pvc_results};
use crate::step::resolve::{InvalidParams, embedded_spec, overlay, validate};
use crate::step::{Failure, Reason, ResolvedStep};

pub fn is_ours(obj: &DynamicObject) -> bool {
    TektonRun::task_identity(obj).is_some_and(|(api, kind)| api == API_VERSION && kind == KIND)
}

pub async fn reconcile(
    obj: Arc<DynamicObject>,
    ctx: Arc<Context>,
    flavor: Flavor,
) -> Result<Requeue, Error> {
    if !is_ours(&obj) {
        return Ok(Requeue::await_change());
    }
    let ns = obj.metadata.namespace.clone().unwrap_or_default();
    let name = obj.metadata.name.clone().unwrap_or_default();
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    let span = tracing::info_span!("reconcile", namespace = %ns, name = %name, kind = flavor.kind(), uid = %uid);
    let _e = span.enter();
    // Names are unique among live objects: a task for another object of
    // this name owns a deleted run (e.g. the previous run of a re-run pipeline).
    let replaced = ctx
        .tasks
        .stop_named(flavor, &ns, &name, Some(&uid), StopCause::Deleted);
    if replaced > 0 {
        info!(
            tasks = replaced,
            "an earlier run of this name was deleted: stopping its task"
        );
    }
    let run = match TektonRun::from_dynamic(flavor, &obj) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %crate::redact::message(&e.to_string()), "malformed run of ours");
            drop(_e);
            fail_unreadable(&ctx, flavor, &obj, &e.to_string()).await?;
            return Ok(Requeue::await_change());
        }
    };
    // The informer's copy is the first guess of any write (status.rs).
    let writer = Arc::new(StatusWriter::seeded(ctx.client.clone(), &run));
    let timeout = match contract::timeout(&run) {
        Ok(t) => t,
        Err(e) => {
            drop(_e);
            let written = writer.fail_invalid(&e.to_string()).await?;
            ctx.final_event(&written).await;
            return Ok(Requeue::await_change());
        }
    };
    let now = Timestamp::now();
    let decision = contract::decide(&run, now, timeout);
    debug!(?decision, "decided");
    drop(_e);
    match decision {
        Decision::Done => Ok(Requeue::await_change()),
        Decision::Cancel => {
            if !ctx.stop_task(flavor, &uid, StopCause::Cancelled) {
                // No step is running here: finish the run now.
                let msg = run
                    .spec
                    .status_message
                    .clone()
                    .unwrap_or_else(|| "cancelled".into());
                writer
                    .update(|r| {
                        // A live owner elsewhere ends its own step.
                        if !owned_here_or_free(&ctx, r) {
                            return Update::Skip;
                        }
                        unless_done(r, |s| {
                            let extra = Extra::of(s);
                            let res = extra_results(&extra);
                            contract::cancel(s, flavor, Timestamp::now(), &msg, res);
                        })
                    })
                    .await?;
            }
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
        Decision::Start => {
            let step = match resolve(&ctx, &run).await {
                Ok(s) => s,
                Err(ResolveError::Refused(f)) => {
                    info!(reason = f.reason.as_str(), error = %crate::redact::message(&f.message), "invalid step");
                    let written = writer.fail(f.reason, &f.message).await?;
                    ctx.final_event(&written).await;
                    return Ok(Requeue::await_change());
                }
                // Reading PVCs failed: nothing was started, reconcile again.
                Err(ResolveError::Api(e)) => return Err(Error::Kube(e)),
            };
            let written = writer
                .update(|r| {
                    if contract::is_started(&r.status) || contract::is_done(&r.status) {
                        return Update::Skip;
                    }
                    let mut s = r.status.clone();
                    Extra {
                        step: Some(step.clone()),
                        progress: Default::default(),
                        owner: Some(Owner::now(&ctx.instance)),
                    }
                    .store(&mut s);
                    contract::start(
                        &mut s,
                        Timestamp::now(),
                        &format!("{} on {}", step.action.as_str(), step.cluster),
                    );
                    Update::Write(s)
                })
                .await?;
            info!(action = step.action.as_str(), cluster = %step.cluster, "started");
            if !contract::is_done(&written.status) {
                let images = match (&step.selection, &step.pvcs) {
                    (crate::step::Selection::Images(l), Some(p)) => format!(
                        "{} images of {} PVCs in namespace {}",
                        l.len(),
                        p.images.len(),
                        p.namespace
                    ),
                    (crate::step::Selection::Images(l), None) => format!("{} images", l.len()),
                    (crate::step::Selection::AllImages, _) => "all mirrored images".into(),
                };
                ctx.event(
                    &written,
                    EventType::Normal,
                    "Started",
                    &format!(
                        "{} on {} ({images} in pool {})",
                        step.action.as_str(),
                        step.cluster,
                        step.pool
                    ),
                )
                .await;
            }
            ctx.ensure_task(writer);
            Ok(requeue_at(contract::deadline(&written, timeout)))
        }
        Decision::TimedOut { retry } => {
            // A running task keeps its own deadline (this view may be older
            // than the attempt it runs): only a run without one is timed out here.
            if ctx.has_task(flavor, &uid) {
                return Ok(Requeue::requeue(Duration::from_secs(5)));
            }
            // The deadline passed while no task ran (e.g. the controller was down).
            writer
                .update(|r| {
                    if !owned_here_or_free(&ctx, r) {
                        return Update::Skip;
                    }
                    unless_done(r, |s| {
                        let res = extra_results(&Extra::of(s));
                        contract::end_attempt(
                            s,
                            r,
                            Timestamp::now(),
                            AttemptEnd::TimedOut,
                            "attempt timed out",
                            res,
                        );
                    })
                })
                .await?;
            if retry {
                ctx.ensure_task(writer);
            }
            Ok(Requeue::requeue(Duration::from_secs(5)))
        }
        Decision::Running { deadline } => {
            if ctx.ensure_task(writer) {
                info!("resuming a running step");
            }
            Ok(requeue_at(deadline))
        }
    }
}

/// Whether this process may end the run without its task: nobody owns
/// it, this process does, or its owner went silent (owner.rs). A live
/// owner elsewhere times out or cancels its own step, after its in-flight
/// mutation returns; ending it here would archive an attempt still running.
fn owned_here_or_free(ctx: &Context, run: &TektonRun) -> bool {
    owner::may_adopt(
        Extra::of(&run.status).owner.as_ref(),
        &ctx.instance,
        Timestamp::now(),
    )
}

/// A running run is looked at again at its deadline, and at least once per
/// owner TTL: a run whose owner went away (owner.rs) is taken over by the
/// next look, with no event to trigger it.
fn requeue_at(deadline: Option<Timestamp>) -> Requeue {
    let every = OWNER_TTL + Duration::from_secs(1);
    let Some(d) = deadline else {
        return Requeue::requeue(every);
    };
    let left = Duration::try_from(d.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO);
    Requeue::requeue((left + Duration::from_millis(500)).min(every))
}

fn extra_results(extra: &Extra) -> Vec<crate::api::RunResult> {
    let images: Vec<String> = match &extra.step {
        Some(step) => extra
            .progress
            .images
            .clone()
            .unwrap_or_else(|| step.images().iter().map(|i| i.to_string()).collect()),
        None => return vec![],
    };
    let mut r = results(&images, &extra.progress, Duration::ZERO);
    if let Some(step) = &extra.step {
        r.extend(pvc_results(step, &extra.progress));
    }
    r
}

/// Why a run's step could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The run ends with this reason: retrying cannot help.
    #[error("{}", .0.message)]
    Refused(Failure),
    /// The API server did not answer a read: reconcile again.
    #[error("Kubernetes API: {0}")]
    Api(#[source] kube::Error),
}

impl From<InvalidParams> for ResolveError {
    fn from(e: InvalidParams) -> Self {
        ResolveError::Refused(Failure::new(Reason::InvalidParams, e.0))
    }
}

/// Params over the referenced (or embedded) RbdMirrorStep spec; PVCs read
/// and turned into images here, once, when the run starts.
pub async fn resolve(ctx: &Context, run: &TektonRun) -> Result<ResolvedStep, ResolveError> {
    let spec = overlay(&base_spec(ctx, run).await?, &run.spec.params)?;
    let Some(request) = pvc::request(&spec, run.namespace())? else {
        return Ok(validate(&spec)?);
    };
    let sa = run
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    let volumes = resolve_pvcs(
        &ctx.client,
        run.namespace(),
        sa,
        &request,
        ctx.config.ceph_csi_config.as_ref(),
    )
    .await
    .map_err(|e| match e {
        PvcReadError::Refused(f) => ResolveError::Refused(f),
        PvcReadError::Api(e) => ResolveError::Api(e),
    })?;
    let selected = pvc::select(
        &request,
        volumes,
        spec.pool.as_deref(),
        spec.rados_namespace.as_deref(),
    )
    .map_err(|e| ResolveError::Refused(Failure::new(Reason::InvalidPvc, e.to_string())))?;
    let mut spec = spec;
    spec.images = Some(selected.images);
    spec.pvcs = None;
    spec.pvc_selector = None;
    spec.pvc_namespace = None;
    // The images carry their pools; `pool` names the common one for the
    // messages (claims in several pools leave it empty).
    if spec.pool.as_deref().is_none_or(str::is_empty) {
        spec.pool = selected.pool;
    }
    let mut step = validate(&spec)?;
    step.pvcs = Some(selected.record);
    Ok(step)
}

async fn base_spec(ctx: &Context, run: &TektonRun) -> Result<RbdMirrorStepSpec, InvalidParams> {
    let base = if let Some(name) = run
        .spec
        .task_ref
        .as_ref()
        .and_then(|r| r.name.as_deref())
        .filter(|n| !n.is_empty())
    {
        let api: Api<RbdMirrorStep> = Api::namespaced(ctx.client.clone(), run.namespace());
        match api.get_opt(name).await {
            Ok(Some(o)) => o.spec,
            Ok(None) => {
                return Err(InvalidParams(format!(
                    "RbdMirrorStep {name:?} named by the task's taskRef does not exist in namespace {}",
                    run.namespace()
                )));
            }
            Err(e) => {
                return Err(InvalidParams(format!(
                    "cannot read RbdMirrorStep {name:?}: {e}"
                )));
            }
        }
    } else if let Some(raw) = run.spec.embedded.as_ref().and_then(|e| e.spec.as_ref()) {
        embedded_spec(raw)?
    } else {
        RbdMirrorStepSpec::default()
    };
    Ok(base)
}

/// A run of ours whose spec or status does not parse: fail it with what
/// is wrong, by patching only the status we own.
async fn fail_unreadable(
    ctx: &Context,
    flavor: Flavor,
    obj: &DynamicObject,
    message: &str,
) -> Result<(), Error> {
    let done = obj
        .data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| c.as_array())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Succeeded" && c["status"] != "Unknown")
        });
    // Without a version the patch would be unconditional.
    if done || obj.metadata.resource_version.is_none() {
        return Ok(());
    }
    let mut status = crate::api::RunStatus::default();
    contract::fail(
        &mut status,
        Timestamp::now(),
        Reason::InvalidParams.as_str(),
        message,
        vec![],
    );
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        obj.metadata.namespace.as_deref().unwrap_or(""),
        &flavor.api_resource(),
    );
    let status = super::status::sanitize(status);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": obj.metadata.resource_version, "uid": obj.metadata.uid},
        "status": status,
    });
    match api
        .patch_status(
            obj.metadata.name.as_deref().unwrap_or(""),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn error_policy(obj: Arc<DynamicObject>, err: &Error, _ctx: Arc<Context>) -> Requeue {
    warn!(namespace = obj.metadata.namespace.as_deref().unwrap_or(""), name = obj.metadata.name.as_deref().unwrap_or(""), error = %crate::redact::message(&err.to_string()), "requeue after error");
    Requeue::requeue(Duration::from_secs(5))
}
