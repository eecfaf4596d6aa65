//! Reports: what a model holds ([`inspect`]) and, later, what each pass did.

pub mod inspect;
