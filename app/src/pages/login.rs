//! `/login`: fields "Username" and "Password", button "Sign in".

use crate::components::layout::use_session;
use crate::components::problem::FormError;
use crate::functions::session::Login;
use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

#[component]
pub fn LoginPage() -> impl IntoView {
    let session = use_session();
    let query = use_query_map();
    view! {
        <section class="login">
            <h1>"Sign in"</h1>
            <Transition fallback=|| view! { <p>"Loading…"</p> }>
                {move || Suspend::new(async move {
                    let csrf = session.await.unwrap_or_default().csrf;
                    let next = query.read_untracked().get("next").unwrap_or_default();
                    view! { <LoginForm csrf next/> }
                })}
            </Transition>
        </section>
    }
}

/// The form, with its error line and the show-password toggle. On success
/// the server redirects, and the browser follows.
#[island]
fn LoginForm(csrf: String, next: String) -> impl IntoView {
    let login = ServerAction::<Login>::new();
    let show = RwSignal::new(false);
    let error = Signal::derive(move || login.value().get().and_then(|r| r.err()).map(|e| e.to_string()));
    view! {
        <ActionForm action=login>
            <input type="hidden" name="csrf" value=csrf/>
            <input type="hidden" name="next" value=next/>
            <label for="username">"Username"</label>
            <input id="username" name="username" autocomplete="username" required/>
            <label for="password">"Password"</label>
            <div class="password">
                <input
                    id="password"
                    name="password"
                    type=move || if show.get() { "text" } else { "password" }
                    autocomplete="current-password"
                    required
                />
                <button
                    type="button"
                    class="quiet"
                    aria-pressed=move || show.get().to_string()
                    on:click=move |_| show.update(|s| *s = !*s)
                >
                    {move || if show.get() { "Hide password" } else { "Show password" }}
                </button>
            </div>
            <button type="submit" disabled=move || login.pending().get()>"Sign in"</button>
        </ActionForm>
        <FormError message=error/>
    }
}
