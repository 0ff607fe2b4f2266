//! Index repairs of a pass: what the `indexes` check reports, planned by
//! [`crate::indexes::plan`] as steps (`... CONCURRENTLY` outside a transaction, bounded by its
//! own statement_timeout; the ATTACH under lock_timeout) and run by the executor.

use super::*;

/// Repairs what the `indexes` check reports: leftover INVALID indexes are dropped
/// concurrently, missing partition indexes built concurrently (or an existing matching one
/// reused) and attached to the parent index.
pub(super) async fn repair_indexes(
    client: &mut Client,
    ctx: &mut Ctx<'_>,
    table: &TableConfig,
    tr: &mut TableReport,
) {
    let parent = RelName::from(&table.name);
    let snap = match indexes::snapshot(&*client, &parent).await {
        Ok(s) => s,
        Err(e) => {
            tr.errors
                .push(format!("reading indexes: {}", error_text(&e)));
            return;
        }
    };
    let (repairs, left) = indexes::plan(&parent, &snap);
    tr.notes.extend(left);
    'repairs: for repair in &repairs {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        let steps = repair.steps();
        if ctx.dry_run {
            for step in &steps {
                let _ = writeln!(ctx.out, "{}", step.render(ctx.config));
            }
            tr.indexes_repaired.push(repair.label());
            continue;
        }
        let mut exec = Executor::new(client, ctx.config);
        for step in &steps {
            if let Err(e) = exec.run(step).await {
                tr.errors.push(e.to_string());
                continue 'repairs;
            }
        }
        tracing::info!(repair = %repair.label(), "index repaired");
        tr.indexes_repaired.push(repair.label());
    }
}
