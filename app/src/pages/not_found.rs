use crate::components::problem::Problem;
use crate::error::AppError;
use leptos::prelude::*;

#[component]
pub fn NotFound() -> impl IntoView {
    view! { <Problem error=AppError::NotFound/> }
}
