//! Small views shared by the pages.

pub mod badges;
pub mod diff;
pub mod layout;
pub mod live;
pub mod passkey;
pub mod problem;
