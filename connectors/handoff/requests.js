// cardcare agent console: the service desk's Requests view, alerts and figures, and (supervisors and
// grievance officers) the Messages view: what the bank's own messages did and cost. Uses console.js's
// call() (session cookie and CSRF token). Everything shown is set as text, never as HTML.
let currentRequest = null;
const STATUS_WORDS = {open: "open", in_progress: "in progress", needs_documents: "waiting for the customer",
                      resolved: "resolved", rejected: "rejected"};

function when(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : "-"; }
function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); }
function item(list, text) { const li = document.createElement("li"); li.textContent = text; list.appendChild(li); return li; }

function showTab(name) {
  $("desk").hidden = name !== "chats";
  $("requests-view").hidden = name !== "requests";
  $("figures-view").hidden = name !== "figures";
  $("messages-view").hidden = name !== "messages";
  ["chats", "requests", "figures", "messages"].forEach(t => $("tab-" + t).className = t === name ? "on" : "");
  if (name === "requests") refreshRequests();
  if (name === "figures") refreshFigures();
  if (name === "messages") refreshMessages();
}

async function refreshRequests() {
  const query = new URLSearchParams();
  if ($("f-kind").value) query.set("kind", $("f-kind").value);
  if ($("f-status").value) query.set("status", $("f-status").value);
  ["overdue", "mine", "closed"].forEach(f => { if ($("f-" + f).checked) query.set(f, "1"); });
  const data = await call("/requests?" + query.toString());
  if ($("f-kind").options.length === 1) {
    data.kinds.forEach(k => { const o = document.createElement("option"); o.value = k.kind; o.textContent = k.label; $("f-kind").appendChild(o); });
    data.statuses.forEach(s => { const o = document.createElement("option"); o.value = s; o.textContent = STATUS_WORDS[s]; $("f-status").appendChild(o); });
  }
  const body = $("worklist").tBodies[0];
  body.innerHTML = "";
  data.requests.forEach(r => {
    const row = document.createElement("tr");
    row.className = (r.overdue ? "late " : "") + (r.reference === currentRequest ? "active" : "");
    row.dataset.reference = r.reference;
    cell(row, when(r.promised_by) + (r.overdue ? " LATE" : "") + (r.callback ? " (call)" : ""));
    cell(row, r.reference); cell(row, r.label); cell(row, STATUS_WORDS[r.status] || r.status);
    cell(row, r.customer_name + " " + r.customer_phone); cell(row, r.assigned_to || "-");
    row.onclick = () => openRequest(r.reference);
    body.appendChild(row);
  });
}

async function openRequest(reference) {
  const r = await call("/requests/" + encodeURIComponent(reference));
  currentRequest = r.reference;
  $("request").hidden = false; $("r-error").textContent = "";
  $("r-title").textContent = r.reference + " - " + r.label + " - " + (STATUS_WORDS[r.status] || r.status);
  $("r-facts").textContent = "Customer " + r.customer.name + " (" + r.customer.phone + (r.customer.email ? ", " + r.customer.email : "") +
    ")" + (r.card_last4 ? " | card ..." + r.card_last4 : "") + " | raised " + when(r.created_at) + " | due by " + when(r.promised_by) +
    (r.overdue ? " (LATE)" : "") + " | level " + r.escalation_level + " " + (r.escalation_name || "") + " | with " + (r.assigned_to || "nobody");
  const parts = [];
  if (r.transaction) parts.push("Transaction " + r.transaction.reference + " at " + r.transaction.merchant + " on " + r.transaction.posted_on);
  if (r.reason) parts.push("Reason: " + r.reason);
  if (r.description) parts.push("Customer said: " + r.description);
  if (r.asked && r.asked.new_address) parts.push("New address asked for: " + r.asked.new_address);
  if (r.asked && r.asked.new_email) parts.push("New e-mail asked for: " + r.asked.new_email);
  if (r.needs) parts.push("Asked for: " + r.needs);
  if (r.resolution) parts.push("Outcome: " + r.resolution);
  $("r-detail").textContent = parts.join(" | ");
  $("r-documents").innerHTML = "";
  r.documents.forEach(d => {
    const li = item($("r-documents"), "");
    if (d.stored) { const a = document.createElement("a"); a.rel = "noopener noreferrer";
      a.href = api + "/requests/" + encodeURIComponent(r.reference) + "/documents/" + d.number;
      a.textContent = "Download " + (d.filename || ("document " + d.number)) + " (" + (d.mime_type || "file") + ")"; li.appendChild(a); }
    else li.textContent = "Document " + d.number + " (not fetched from WhatsApp)";
    if (d.caption) li.appendChild(document.createTextNode(" - " + d.caption));
  });
  if (!r.documents.length) item($("r-documents"), "None yet");
  $("r-history").innerHTML = "";
  r.history.forEach(h => item($("r-history"), when(h.at) + "  " + (STATUS_WORDS[h.status] || h.status) + "  [" + h.event + ", " + h.actor + "]" + (h.note ? "  " + h.note : "")));
  $("r-notices").innerHTML = "";
  r.notices.forEach(n => item($("r-notices"), when(n.created_at) + "  " + n.medium + " (" + n.state + "): " + n.text));
  const select = $("r-status");
  select.innerHTML = "";
  ({open: ["in_progress", "needs_documents", "resolved", "rejected"], in_progress: ["needs_documents", "resolved", "rejected"],
    needs_documents: ["in_progress", "resolved", "rejected"]}[r.status] || []).forEach(s => {
      const o = document.createElement("option"); o.value = s; o.textContent = STATUS_WORDS[s]; select.appendChild(o); });
  $("r-actions").hidden = r.closed;
  $("r-delay").value = r.delay_reason || "";
  const give = $("r-assign"); give.innerHTML = "";
  Array.from($("transfer-to").options).forEach(o => { const c = document.createElement("option"); c.value = o.value; c.textContent = o.textContent; give.appendChild(c); });
  refreshRequests();
}

async function requestAct(path, body) {
  $("r-error").textContent = "";
  try { await call("/requests/" + encodeURIComponent(currentRequest) + path, "POST", body); await openRequest(currentRequest); return true; }
  catch (e) { $("r-error").textContent = e.message; return false; }
}

async function refreshFigures() {
  const data = await call("/figures");
  const body = $("figures").tBodies[0];
  body.innerHTML = "";
  data.kinds.forEach(f => {
    const row = document.createElement("tr");
    [f.label, f.opened, f.active, f.resolved_in_time, f.resolved_late, f.rejected, f.overdue, f.escalated,
     f.median_hours_to_resolve === null ? "-" : f.median_hours_to_resolve].forEach(v => cell(row, String(v)));
    body.appendChild(row);
  });
}

function tenThousandths(text) { return Math.round(Number(text || 0) * 10000); }  // exact sums of the report's decimals
function counts(list, figures) {
  list.innerHTML = "";
  const names = Object.keys(figures || {});
  names.forEach(name => item(list, name.replaceAll("_", " ") + ": " + figures[name]));
  if (!names.length) item(list, "None");
}
function reportRow(r) {
  const row = document.createElement("tr");
  [r.day, r.category, r.sent, r.delivered, r.read, r.failed, r.reminders, r.paid_48h, r.whatsapp_cost_rounded,
   r.sms_cost_rounded].forEach(v => cell(row, String(v)));
  return row;
}

async function refreshMessages() {
  $("m-error").textContent = "";
  const days = $("m-days").value || "7";
  let data;
  try { data = await call("/messages/report?days=" + encodeURIComponent(days)); }
  catch (e) { $("m-error").textContent = e.message; return; }
  $("messages-json").href = api + "/messages/report?days=" + encodeURIComponent(days);
  $("m-period").textContent = data.from + " to " + data.to + " (" + data.timezone + "), costs in " + data.currency;
  const body = $("messages-report").tBodies[0], foot = $("messages-report").tFoot;
  body.innerHTML = ""; foot.innerHTML = "";
  data.rows.forEach(r => body.appendChild(reportRow(r)));
  if (!data.rows.length) { const row = document.createElement("tr"); cell(row, "No messages in this period"); body.appendChild(row); }
  foot.appendChild(reportRow(Object.assign({}, data.total, {day: "Total", category: ""})));
  const t = data.total;
  $("m-paid").textContent = t.reminders
    ? "Paid within 48 h of a reminder: " + t.paid_48h + " of " + t.reminders + " (" + (100 * t.paid_48h / t.reminders).toFixed(1) + " %)"
    : "Paid within 48 h of a reminder: no reminders sent in this period";
  const whatsapp = tenThousandths(t.whatsapp_cost), sms = tenThousandths(t.sms_cost);
  $("m-cost").textContent = sms
    ? "WhatsApp cost " + data.currency + " " + t.whatsapp_cost_rounded + " against SMS " + data.currency + " " + t.sms_cost_rounded +
      ": " + (whatsapp <= sms ? "saved " : "extra ") + data.currency + " " + String(data.saving_rounded || "").replace("-", "") +
      " (WhatsApp is " + (100 * whatsapp / sms).toFixed(0) + " % of SMS)"
    : "WhatsApp cost " + data.currency + " " + t.whatsapp_cost_rounded + "; nothing sent to compare with SMS";
  $("m-rates").textContent = "Rates: " + (data.rates || "reminders.yml (no source given)");
  counts($("m-not-sent"), data.not_sent);
  counts($("m-waiting"), data.waiting);
}

async function refreshAlerts() {
  if (!csrf) return;
  try {
    const data = await call("/alerts");
    $("alert-count").textContent = data.alerts.length;
    $("alert-list").innerHTML = "";
    data.alerts.forEach(a => {
      const li = item($("alert-list"), when(a.at) + "  " + a.text);
      li.onclick = async () => { await call("/alerts/" + a.id + "/read", "POST", {}); showTab("requests"); openRequest(a.reference); refreshAlerts(); };
    });
  } catch (e) { /* signed out: the next round tries again */ }
}

$("tab-chats").onclick = () => showTab("chats");
$("tab-requests").onclick = () => showTab("requests");
$("tab-figures").onclick = () => showTab("figures");
$("tab-messages").onclick = () => showTab("messages");
$("m-days").onchange = refreshMessages;
$("alerts-toggle").onclick = () => { $("alerts").hidden = !$("alerts").hidden; };
["f-kind", "f-status", "f-overdue", "f-mine", "f-closed"].forEach(id => $(id).onchange = refreshRequests);
$("r-update").onclick = async () => { if (await requestAct("/status", {status: $("r-status").value, note: $("r-note").value})) $("r-note").value = ""; };
$("r-take").onclick = () => requestAct("/assign", {to: document.body.dataset.username || ""});
$("r-give").onclick = () => requestAct("/assign", {to: $("r-assign").value});
$("r-delay-save").onclick = () => requestAct("/delay-reason", {reason: $("r-delay").value});
setInterval(() => { refreshAlerts(); if (!$("requests-view").hidden) refreshRequests().catch(() => {}); }, 5000);
setTimeout(refreshAlerts, 500);
