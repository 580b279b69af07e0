
mod packs;
mod support_procs;
