//! Index repairs of a pass: what the `indexes` check reports, planned by
//! [`crate::indexes::plan`], run without heavy locks (`... CONCURRENTLY` outside a transaction,
//! bounded by its own statement_timeout; the rest under lock_timeout).

use super::*;
use tokio_postgres::Transaction;

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
    for repair in &repairs {
        if ctx.stop.load(Ordering::SeqCst) {
            break;
        }
        if ctx.dry_run {
            let mut text = format!("-- {}\n", repair.label());
            for st in repair.statements() {
                text.push_str(&st);
                text.push_str(";\n");
            }
            let _ = writeln!(ctx.out, "{text}");
            tr.indexes_repaired.push(repair.label());
            continue;
        }
        match run_repair(client, ctx.config, ctx.policy, repair).await {
            Ok(()) => {
                tracing::info!(repair = %repair.label(), "index repaired");
                tr.indexes_repaired.push(repair.label());
            }
            Err(e) => tr.errors.push(format!("{}: {e}", repair.label())),
        }
    }
}

async fn run_repair(
    client: &mut Client,
    config: &Config,
    policy: &DdlPolicy,
    repair: &indexes::Repair,
) -> Result<(), String> {
    for step in repair.steps() {
        match step {
            indexes::RepairStep::Concurrently { sql, bound } => {
                // Cannot run in a transaction block; waits for older transactions without
                // blocking writers, so it is bounded by a statement timeout rather than
                // lock_timeout.
                let timeout = match bound {
                    indexes::Bound::IndexBuild => config.maintenance.index_build_timeout,
                    indexes::Bound::Statement => config.database.statement_timeout,
                };
                let result = async {
                    client
                        .execute(
                            "SELECT set_config('lock_timeout', '0', false), set_config('statement_timeout', $1, false)",
                            &[&format!("{}ms", timeout.as_millis())],
                        )
                        .await?;
                    let r = client.batch_execute(&sql).await;
                    client
                        .execute(
                            "SELECT set_config('statement_timeout', $1, false)",
                            &[&format!("{}ms", config.database.statement_timeout.as_millis())],
                        )
                        .await?;
                    client.batch_execute("RESET lock_timeout").await?;
                    r
                }
                .await;
                result.map_err(|e| format!("{}: {sql}", error_text(&e)))?;
            }
            indexes::RepairStep::Transaction { sql } => {
                let label = repair.label();
                ddl::with_lock_retry(client, policy, &label, &[], async |tx: &Transaction<'_>| {
                    tx.execute(sql.as_str(), &[])
                        .await
                        .map_err(|e| (sql.clone(), e))?;
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}
