//! `/proposals/{id}`: the ten-second review. The exact args that will run,
//! beside the diff and where the diff came from (computed by the executor,
//! or only described by the agent); then blast radius and undo; who asked and
//! why; decisions so far; the run's other proposals; Approve / Reject. Keys:
//! a approves, r rejects, j / k move between the run's proposals. After a
//! decision the reviewer is taken to the next proposal waiting for them; a
//! change the server announces is swapped into the page where it stands,
//! never by loading the page again behind the reviewer's back.

use crate::components::badges::{EnvBadge, RiskMarkers, StatusBadge};
use crate::components::diff::DiffView;
use crate::components::layout::use_session;
use crate::components::problem::{FormError, Problem};
use crate::functions::proposals::{get_review, Decide};
use crate::model::{age, ArgRow, DecisionView, PersonalView, Review, RunItem};
use crate::pages::{format_time, now_ms};
use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};

/// The parts of the page a live change is swapped into; the decision panel
/// (an island) updates itself from the same fetch.
#[cfg(feature = "hydrate")]
const LIVE_REGIONS: [&str; 5] = [
    "review-head",
    "review-what",
    "review-details",
    "review-decisions",
    "review-run",
];

/// Rendered on the server; `DecisionPanel` is the interactive part.
#[component]
pub fn ReviewPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").unwrap_or_default();
    let data = Resource::new(id, get_review);
    let session = use_session();
    let query = use_query_map();
    // The proposal decided before this one (the page after a decision); only
    // an id's characters are taken from the address.
    let decided = move || {
        query.read().get("decided").filter(|d| {
            !d.is_empty() && d.len() <= 64 && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    };
    view! {
        <Transition fallback=|| view! { <p>"Loading…"</p> }>
            {move || Suspend::new(async move {
                let csrf = session.await.map(|s| s.csrf).unwrap_or_default();
                match data.await {
                    Err(e) => view! { <Problem error=e/> }.into_any(),
                    Ok(r) => view! {
                        {decided().map(|d| view! {
                            <p class="flash" role="status">
                                "Your decision on " <a href=format!("/proposals/{d}")>"the previous proposal"</a>
                                " is recorded. This one is next in your queue."
                            </p>
                        })}
                        <ReviewView review=r csrf/>
                    }
                    .into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn ReviewView(review: Review, csrf: String) -> impl IntoView {
    let left_ms = review.expires_at_ms - review.now_ms;
    let pending = review.status == "pending";
    let title = format!("{} in {}/{}", review.tool, review.tenant, review.env);
    view! {
        <article class="review" class:destructive=review.destructive>
            <header class="review-head" id="review-head">
                <h1>{title}</h1>
                <p class="markers">
                    <StatusBadge status=review.status.clone()/>
                    <EnvBadge tenant=review.tenant.clone() env=review.env.clone()/>
                    <RiskMarkers destructive=review.destructive irreversible=review.irreversible/>
                    <span class="approvals">{format!("{} of {} approvals", review.approvals, review.approvals_required)}</span>
                    {review.break_glass.then(|| view! { <span class="badge danger">"break-glass: you may approve alone"</span> })}
                    {review.upstream_call.clone().map(|u| view! {
                        <span class="badge gateway" title="countersign performs this call itself, once approved">
                            {format!("MCP: calls {}", u.describe())}
                        </span>
                    })}
                </p>
                <p class="reason"><strong>"Reason: "</strong>{if review.reason.is_empty() { "(none given)".to_owned() } else { review.reason.clone() }}</p>
            </header>

            <section aria-labelledby="what" class="what" id="review-what">
                <h2 id="what">"What will change"</h2>
                <div class="change">
                    <div class="exact-args">
                        <h3>"Exact args (what runs)"</h3>
                        {review.personal.clone().map(|p| view! { <PersonalNote personal=p tenant=review.tenant.clone()/> })}
                        <ArgsTable args=review.args.clone()/>
                    </div>
                    <div class="described">
                        <PreviewSource
                            status=review.status.clone()
                            source=review.preview_source.clone()
                            by=review.preview_by.clone()
                            at_ms=review.preview_at_ms
                        />
                        {review.diff.clone().map(|lines| view! { <DiffView lines/> })}
                    </div>
                </div>
            </section>

            <div class="pair">
                <section aria-labelledby="blast">
                    <h2 id="blast">"Blast radius"</h2>
                    <p>{review.blast_radius.clone()}</p>
                </section>
                <section aria-labelledby="undo">
                    <h2 id="undo">"Can we undo it?"</h2>
                    {if review.irreversible {
                        view! { <p class="irreversible"><strong>"No: irreversible."</strong></p> }.into_any()
                    } else {
                        view! { <p>{review.undo.clone()}</p> }.into_any()
                    }}
                </section>
            </div>

            <section aria-labelledby="details" id="review-details">
                <h2 id="details">"Details"</h2>
                <dl class="facts">
                    <dt>"Tool"</dt><dd>{review.tool.clone()}</dd>
                    {review.upstream_call.clone().map(|u| view! {
                        <dt>"Upstream call"</dt><dd><code>{u.tool.clone()}</code>" on upstream "<code>{u.upstream.clone()}</code>
                            {u.via_mcp.then_some(" (asked through the MCP gateway)")}</dd>
                    })}
                    <dt>"Tenant"</dt><dd>{review.tenant.clone()}</dd>
                    <dt>"Env"</dt><dd>{review.env.clone()}</dd>
                    <dt>"Route"</dt><dd>{review.route.clone()}</dd>
                    <dt>"Run"</dt><dd><code>{review.run_id.clone()}</code></dd>
                    <dt>"For"</dt><dd>{review.on_behalf_of.clone().unwrap_or_else(|| "nobody named".into())}</dd>
                    <dt>"Idempotency key"</dt><dd><code>{review.idempotency_key.clone().unwrap_or_else(|| "none".into())}</code></dd>
                    <dt>"Proposed"</dt><dd>{format_time(review.created_at_ms)}" ("{age(review.now_ms - review.created_at_ms)}" ago)"</dd>
                    <dt>"Time left"</dt><dd>{if pending { if left_ms > 0 { age(left_ms) } else { "expired".into() } } else { "decided".into() }}</dd>
                </dl>
                {review.execution.clone().map(|x| view! {
                    <p class="execution">"Execution: " <StatusBadge status=x.status/> {format!(" after {} attempt(s)", x.attempts)}</p>
                })}
            </section>

            <section aria-labelledby="decisions" id="review-decisions">
                <h2 id="decisions">"Decisions"</h2>
                <Decisions decisions=review.decisions.clone()/>
                {(pending && !review.eligible.is_empty()).then(|| view! {
                    <p class="eligible">"Can also decide: " {review.eligible.join(", ")}</p>
                })}
                {(pending && review.too_fast).then(|| view! {
                    <p class="too-fast" role="alert">
                        "You decided your last few within seconds each, one after another. Take the time to read this one: \
                         what will change, the blast radius, the undo."
                    </p>
                })}
                <OwnPace times=review.own_pace_ms.clone()/>
            </section>

            <RunList id=review.id.clone() run=review.run.clone()/>

            <DecisionPanel
                id=review.id.clone()
                content_hash=review.content_hash.clone()
                csrf
                why_not=review.why_not.clone()
                requires_passkey=review.requires_passkey
            />
        </article>
    }
}

/// How long the reader's own latest decisions took them, newest first: a
/// mirror, for them only.
#[component]
fn OwnPace(times: Vec<Option<i64>>) -> impl IntoView {
    let shown: Vec<String> = times
        .iter()
        .map(|t| match t {
            Some(ms) => format!("{:.1} s", *ms as f64 / 1000.0),
            None => "?".into(),
        })
        .collect();
    (!shown.is_empty()).then(|| {
        view! { <p class="own-pace">"Your latest decisions took: " {shown.join(" · ")} " (newest first)"</p> }
    })
}

/// The run's proposals, this one marked: an agent's parallel calls are
/// read together, and each is still decided on its own screen. Always in the
/// page (empty for a run of one) so a live change can fill it.
#[component]
fn RunList(id: String, run: Vec<RunItem>) -> impl IntoView {
    let others = run.len().saturating_sub(1);
    let pending = run.iter().filter(|r| r.status == "pending" && r.id != id).count();
    view! {
        <nav id="review-run" class="run-list" aria-labelledby="run-heading">
            {(others > 0).then(|| view! {
                <h2 id="run-heading">{format!("This run: {} other proposal(s), {pending} pending", others)}</h2>
                <p class="hint">"Keys: " <kbd>"j"</kbd> " / " <kbd>"k"</kbd> " next / previous of this run."</p>
                <ol>
                    {run
                        .into_iter()
                        .map(|r| {
                            let here = r.id == id;
                            view! {
                                <li class:here=here>
                                    <a href=format!("/proposals/{}", r.id) aria-current=here.then_some("page")>{r.tool}</a>
                                    " " <StatusBadge status=r.status.clone()/>
                                    {(r.status == "pending").then(|| format!(" {} of {}", r.approvals, r.approvals_required))}
                                    {r.destructive.then(|| view! { " " <span class="badge danger">"destructive"</span> })}
                                </li>
                            }
                        })
                        .collect_view()}
                </ol>
            })}
        </nav>
    }
}

/// Approve / Reject with an optional comment (required to reject); keys a and
/// r, and j / k through the run's proposals. After a decision the page goes
/// to the next proposal waiting for this person, or, when none waits, shows
/// the new state where it stands. When the server says this proposal changed
/// while nothing is typed, the new state is fetched and swapped in: never a
/// reload, which would cut across a navigation the reviewer has started.
#[island]
fn DecisionPanel(
    id: String,
    content_hash: String,
    csrf: String,
    why_not: Option<String>,
    requires_passkey: bool,
) -> impl IntoView {
    let opened_at = StoredValue::new(0i64);
    Effect::new(move |_| opened_at.set_value(now_ms()));
    let decide = ServerAction::<Decide>::new();
    let comment = RwSignal::new(String::new());
    let local_error = RwSignal::new(None::<String>);
    let notice = RwSignal::new(None::<String>);
    // A passkey ceremony under way (the browser asks for the passkey).
    let signing = RwSignal::new(false);
    let why_not = RwSignal::new(why_not);
    let hash = StoredValue::new(content_hash.clone());
    let error = Signal::derive(move || {
        local_error
            .get()
            .or_else(|| decide.value().get().and_then(|r| r.err()).map(|e| e.to_string()))
    });
    let can_decide = move || why_not.get().is_none();
    #[cfg(feature = "hydrate")]
    {
        let here = id.clone();
        Effect::new(move |_| {
            if let Some(Ok(d)) = decide.value().get() {
                comment.set(String::new());
                match d.next {
                    Some(next) => go_to(&format!("/proposals/{next}?decided={here}")),
                    None => {
                        notice.set(Some("Recorded. Nothing else is waiting for you.".into()));
                        leptos::task::spawn_local(refresh(why_not, hash));
                    }
                }
            }
        });
    }
    let submit = {
        let id = id.clone();
        move |verdict: &'static str| {
            if why_not.get_untracked().is_some() || decide.pending().get_untracked() || signing.get_untracked() {
                return;
            }
            let text = comment.get_untracked();
            if verdict == "reject" && text.trim().is_empty() {
                local_error.set(Some("A rejection needs a comment saying why.".into()));
                if let Some(el) = document().get_element_by_id("comment") {
                    let _ =
                        leptos::wasm_bindgen::JsCast::dyn_into::<leptos::web_sys::HtmlElement>(el).map(|e| e.focus());
                }
                return;
            }
            local_error.set(None);
            let opened = opened_at.get_value();
            let request = Decide {
                id: id.clone(),
                verdict: verdict.into(),
                comment: text,
                content_hash: hash.get_value(),
                view_ms: (opened > 0).then(|| now_ms() - opened),
                csrf: csrf.clone(),
                passkey_ceremony: None,
                passkey_credential: None,
            };
            if requires_passkey {
                sign_then_decide(request, decide, signing, local_error);
            } else {
                decide.dispatch(request);
            }
        }
    };
    #[cfg(feature = "hydrate")]
    {
        use crate::components::live::{on_server_change, shortcut_key};
        let on_key = submit.clone();
        let handle = window_event_listener(leptos::ev::keydown, move |ev| match shortcut_key(&ev).as_deref() {
            Some("a") => on_key("approve"),
            Some("r") => on_key("reject"),
            Some("j") => step_through_run(1),
            Some("k") => step_through_run(-1),
            _ => {}
        });
        on_cleanup(move || handle.remove());
        let mine = format!("\"{id}\"");
        on_server_change(move |data| {
            let relevant = data.contains(&mine) || data.contains("\"controls\"") || data.contains("\"lagged\"");
            if relevant && comment.get_untracked().is_empty() && !decide.pending().get_untracked() {
                leptos::task::spawn_local(refresh(why_not, hash));
            }
        });
    }
    let approve = submit.clone();
    let reject = submit;
    view! {
        <section class="decide" aria-labelledby="decide" data-content-hash=content_hash>
            <h2 id="decide">"Your decision"</h2>
            <label for="comment">"Comment"</label>
            <textarea
                id="comment"
                rows="2"
                prop:value=move || comment.get()
                on:input=move |ev| comment.set(event_target_value(&ev))
                disabled=move || !can_decide()
                placeholder="Required to reject"
            ></textarea>
            <div class="buttons">
                <button
                    type="button"
                    class="approve"
                    disabled=move || !can_decide() || decide.pending().get() || signing.get()
                    aria-describedby="why-not"
                    aria-keyshortcuts="a"
                    on:click=move |_| approve("approve")
                >
                    {if requires_passkey { "Approve with passkey" } else { "Approve" }}
                </button>
                <button
                    type="button"
                    class="reject"
                    disabled=move || !can_decide() || decide.pending().get() || signing.get()
                    aria-describedby="why-not"
                    aria-keyshortcuts="r"
                    on:click=move |_| reject("reject")
                >
                    {if requires_passkey { "Reject with passkey" } else { "Reject" }}
                </button>
                <span id="why-not" class="why-not">{move || why_not.get()}</span>
            </div>
            {requires_passkey.then(|| view! {
                <p class="hint passkey-needed">
                    "Decisions on this tool are signed with your passkey. "
                    <a href="/account">"Your passkeys"</a>
                </p>
            })}
            {move || signing.get().then(|| view! { <p class="notice" role="status">"Use your passkey to sign this decision…"</p> })}
            {move || notice.get().map(|n| view! { <p class="notice" role="status">{n}</p> })}
            <FormError message=error/>
        </section>
    }
}

/// Fetch the page's new state and swap it in: the server-rendered regions,
/// and for the panel, why this person may not decide (if so) and the content
/// hash a decision must carry.
#[cfg(feature = "hydrate")]
async fn refresh(why_not: RwSignal<Option<String>>, hash: StoredValue<String>) {
    let Some(fresh) = crate::components::live::refresh_regions(&LIVE_REGIONS).await else {
        return;
    };
    if let Some(text) = fresh
        .get_element_by_id("why-not")
        .map(|e| e.text_content().unwrap_or_default())
    {
        why_not.set((!text.is_empty()).then_some(text));
    }
    if let Some(h) = fresh
        .query_selector("section.decide[data-content-hash]")
        .ok()
        .flatten()
        .and_then(|e| e.get_attribute("data-content-hash"))
    {
        hash.set_value(h);
    }
}

/// Sign the decision with a passkey, then send it: the server binds the
/// challenge to this proposal, its content hash and the verdict.
fn sign_then_decide(
    request: Decide,
    decide: ServerAction<Decide>,
    signing: RwSignal<bool>,
    error: RwSignal<Option<String>>,
) {
    #[cfg(feature = "hydrate")]
    leptos::task::spawn_local(async move {
        use crate::functions::account::start_passkey_decision;
        signing.set(true);
        let started = start_passkey_decision(
            request.id.clone(),
            request.verdict.clone(),
            request.content_hash.clone(),
            request.csrf.clone(),
        )
        .await;
        let signed = match started {
            Err(e) => Err(e.to_string()),
            Ok(c) => crate::components::passkey::sign(&c.options)
                .await
                .map(|credential| (c.ceremony, credential)),
        };
        signing.set(false);
        match signed {
            Err(e) => error.set(Some(e)),
            Ok((ceremony, credential)) => {
                decide.dispatch(Decide {
                    passkey_ceremony: Some(ceremony),
                    passkey_credential: Some(credential),
                    ..request
                });
            }
        }
    });
    #[cfg(not(feature = "hydrate"))]
    let _ = (request, decide, signing, error);
}

/// Open the next (+1) or previous (-1) proposal of the run list.
#[cfg(feature = "hydrate")]
fn step_through_run(by: isize) {
    use leptos::wasm_bindgen::JsCast;
    let Ok(links) = document().query_selector_all("#review-run a") else {
        return;
    };
    let links: Vec<leptos::web_sys::HtmlAnchorElement> = (0..links.length())
        .filter_map(|i| links.item(i)?.dyn_into().ok())
        .collect();
    let Some(here) = links.iter().position(|a| a.get_attribute("aria-current").is_some()) else {
        return;
    };
    let to = here as isize + by;
    if let Some(a) = usize::try_from(to).ok().and_then(|i| links.get(i)) {
        go_to(&a.href());
    }
}

/// Navigate, on purpose (browser only).
#[cfg(feature = "hydrate")]
fn go_to(href: &str) {
    let _ = window().location().assign(href);
}

/// Where the diff came from, said plainly: a dry run by the executor that
/// owns the system, or the agent's own words (visibly weaker), or not yet.
#[component]
fn PreviewSource(status: String, source: Option<String>, by: Option<String>, at_ms: Option<i64>) -> impl IntoView {
    match (status.as_str(), source.as_deref()) {
        ("previewing", _) => view! {
            <p class="source waiting">"Waiting for the executor to compute what will change: this cannot be decided yet."</p>
        }
        .into_any(),
        (_, Some("executor")) => view! {
            <p class="source executor">
                {format!(
                    "Computed by executor {} at {}",
                    by.unwrap_or_default(),
                    at_ms.map(format_time).unwrap_or_default()
                )}
            </p>
        }
        .into_any(),
        (_, Some(_)) => view! {
            <p class="source agent">"Described by the agent, not checked: compare it with the exact args."</p>
        }
        .into_any(),
        _ => view! { <p class="source none">"No preview: the exact args are all there is to read."</p> }.into_any(),
    }
}

#[component]
fn ArgsTable(args: Vec<ArgRow>) -> impl IntoView {
    view! {
        <table class="args">
            <tbody>
                {args
                    .into_iter()
                    .map(|a| {
                        view! {
                            <tr class:personal=a.personal>
                                <th scope="row">
                                    {a.name}
                                    {a.personal.then(|| view! { <span class="badge personal">"personal data"</span> })}
                                </th>
                                <td>
                                    {match a.full {
                                        None => view! { <span>{a.short}</span> }.into_any(),
                                        Some(full) => view! {
                                            <details>
                                                <summary>{a.short}</summary>
                                                <pre class="whole">{full}</pre>
                                            </details>
                                        }
                                        .into_any(),
                                    }}
                                </td>
                            </tr>
                        }
                    })
                    .collect_view()}
            </tbody>
        </table>
    }
}

/// What the reader should know of the personal data in these args: that
/// it is for deciding, that it is masked for them, or that it was erased.
#[component]
fn PersonalNote(personal: PersonalView, tenant: String) -> impl IntoView {
    let text = match (personal.erased_at_ms, personal.shown) {
        (Some(at), _) => format!(
            "Personal data erased on {}: the values are gone; the args hash, the decisions and the audit log remain.",
            format_time(at)
        ),
        (None, true) => {
            "Args marked personal data are shown to reviewers to decide; everywhere else they are masked, and they \
             are erased after the retention period."
                .to_owned()
        }
        (None, false) => format!("Personal data masked: only reviewers of {tenant} read these values."),
    };
    view! { <p class="personal-note" role="note">{text}</p> }
}

#[component]
pub fn Decisions(decisions: Vec<DecisionView>) -> impl IntoView {
    if decisions.is_empty() {
        return view! { <p>"No decisions yet."</p> }.into_any();
    }
    view! {
        <ul class="decisions">
            {decisions
                .into_iter()
                .map(|d| {
                    view! {
                        <li class=format!("verdict-{}", d.verdict)>
                            <strong>{d.username}</strong>
                            {format!(" {}d ", if d.verdict == "approve" { "approve" } else { "reject" })}
                            <span class="when">{format_time(d.at_ms)}</span>
                            {d.break_glass.then(|| view! { <span class="badge danger">"break-glass"</span> })}
                            {d.quick.then(|| view! { <span class="badge warn" title="Decided within 2 seconds of opening">"quick"</span> })}
                            {d.passkey.then(|| view! { <span class="badge ok" title="Signed with their passkey, bound to this proposal and verdict">"passkey-signed"</span> })}
                            {d.note.map(|n| view! { <span class="badge warn reviewer-since">{n}</span> })}
                            {(!d.comment.is_empty()).then(|| view! { <q>{d.comment}</q> })}
                        </li>
                    }
                })
                .collect_view()}
        </ul>
    }
    .into_any()
}
