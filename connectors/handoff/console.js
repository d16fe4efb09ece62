// cardcare agent console: sign in, queue, claim, reply, notes, transfer, close. Polls every 2 s.
// The server decides what each agent sees: an agent the waiting chats and their own (and their own
// notes), a supervisor every chat, finished ones included, and every note.
const api = "/webhooks/whatsapp/agents/api";
let csrf = null, current = null, lastId = 0, firstName = "";
const $ = id => document.getElementById(id);
const REPORT_ROLES = ["supervisor", "grievance_officer"];  // see the Messages tab (its API refuses anyone else)

async function call(path, method = "GET", body) {
  const headers = {"Content-Type": "application/json"};
  if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
  const answer = await fetch(api + path, {method, headers, body: body ? JSON.stringify(body) : undefined,
                                          credentials: "same-origin"});
  const data = await answer.json().catch(() => ({}));
  if (answer.status === 401) { showSignIn(); throw new Error(data.error || "Please sign in."); }
  if (!answer.ok) throw new Error(data.error || ("HTTP " + answer.status));
  return data;
}

function showSignIn() { csrf = null; $("signin").hidden = false; $("desk").hidden = true; $("logout").hidden = true;
  ["tabs", "requests-view", "figures-view", "messages-view", "alerts"].forEach(id => { const e = $(id); if (e) e.hidden = true; }); }
function showDesk(data) {
  csrf = data.csrf;
  $("who").textContent = data.agent.first_name + " (" + data.agent.username + (data.agent.role === "supervisor" ? ", supervisor" : "") + ")";
  document.body.dataset.username = data.agent.username;
  document.body.dataset.role = data.agent.role;
  $("tab-messages").hidden = !REPORT_ROLES.includes(data.agent.role);
  $("signin").hidden = true; $("desk").hidden = false; $("logout").hidden = false; $("tabs").hidden = false;
}

function minutes(seconds) { return seconds < 60 ? seconds + " s" : Math.floor(seconds / 60) + " min"; }
function standing(row) {
  if (row.status === "queued") return "waiting " + minutes(row.waiting_seconds);
  if (row.status === "active") return "with " + row.agent + (row.mine ? " (you)" : "");
  return row.status + (row.agent ? " (" + row.agent + ")" : "");
}

async function refreshQueue() {
  if (!csrf) return;
  const data = await call("/queue");
  const list = $("queue");
  list.innerHTML = "";
  data.queue.forEach(row => {
    const li = document.createElement("li");
    li.className = row.reference === current ? "active" : "";
    li.dataset.reference = row.reference;
    li.textContent = (row.status === "queued" ? "#" + row.position + " " : "") + row.customer + " - " + row.reason;
    const small = document.createElement("small");
    small.textContent = row.reference + " | " + row.masked_sender + " | " + standing(row);
    li.appendChild(small);
    li.onclick = () => openTicket(row.reference);
    list.appendChild(li);
  });
  const select = $("transfer-to"), key = JSON.stringify(data.agents);
  if (select.dataset.key !== key) {  // rebuilt only when colleagues change, so a choice is not lost
    const chosen = select.value;
    select.innerHTML = "";
    data.agents.forEach(a => { const o = document.createElement("option"); o.value = a.username;
      o.textContent = a.first_name + (a.online ? " (online)" : ""); select.appendChild(o); });
    select.value = chosen || select.value;
    select.dataset.key = key;
  }
}

function addMessage(m) {
  const div = document.createElement("div");
  div.className = "m " + m.author;
  if (m.author !== "system") { const b = document.createElement("b");
    b.textContent = {customer: "Customer", bot: "Assistant", agent: m.agent || "Agent", note: "Note by " + (m.agent || "an agent")}[m.author] + " " + m.at.slice(11, 16);
    div.appendChild(b); }
  div.appendChild(document.createTextNode(m.text));
  if (m.attachment && m.attachment.stored) { const a = document.createElement("a");
    a.href = api + "/media/" + encodeURIComponent(m.attachment.stored); a.rel = "noopener noreferrer";
    a.textContent = " [download " + (m.attachment.kind || "file") + "]"; div.appendChild(a); }
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  lastId = Math.max(lastId, m.id);
}

async function openTicket(reference) {
  const t = await call("/tickets/" + encodeURIComponent(reference));
  current = reference; lastId = 0; firstName = t.customer_name || "";
  $("chat").hidden = false; $("messages").innerHTML = ""; $("chat-error").textContent = "";
  $("summary").textContent = t.summary;
  $("cards").textContent = t.cards.map(c => c.product + " ..." + c.last4 + " (" + c.status + "): outstanding " +
    c.outstanding + ", minimum " + c.minimum_due + ", due " + c.due_date + ", available " + c.available).join(" | ");
  t.messages.forEach(addMessage);
  $("claim").hidden = t.status !== "queued";
  refreshQueue();
}

async function poll() {
  try {
    await refreshQueue();
    if (current) (await call("/tickets/" + encodeURIComponent(current) + "/messages?after=" + lastId)).messages.forEach(addMessage);
  } catch (e) { /* signed out or restarting: the next round tries again */ }
  setTimeout(poll, 2000);
}

async function act(path, body, after) {
  $("chat-error").textContent = "";
  try { await call("/tickets/" + encodeURIComponent(current) + path, "POST", body); if (after) after(); await poll1(); }
  catch (e) { $("chat-error").textContent = e.message; }
}
async function poll1() { (await call("/tickets/" + encodeURIComponent(current) + "/messages?after=" + lastId)).messages.forEach(addMessage); refreshQueue(); }

$("login-form").onsubmit = async event => {
  event.preventDefault();
  $("login-error").textContent = "";
  try { showDesk(await call("/login", "POST", {username: $("username").value, password: $("password").value}));
        $("password").value = ""; loadCanned(); refreshQueue(); }
  catch (e) { $("login-error").textContent = e.message; }
};
$("logout").onclick = async () => { await call("/logout", "POST").catch(() => {}); current = null; showSignIn(); };
$("claim").onclick = () => act("/claim", {}, () => { $("claim").hidden = true; });
$("send").onclick = () => { const text = $("reply").value.trim(); if (text) act("/reply", {text}, () => { $("reply").value = ""; }); };
$("add-note").onclick = () => act("/note", {text: $("note").value}, () => { $("note").value = ""; });
$("transfer").onclick = () => act("/transfer", {to: $("transfer-to").value});
$("close").onclick = () => act("/close", {resolution: $("resolution").value}, () => { $("resolution").value = ""; });
$("canned").onchange = () => { if ($("canned").value) { $("reply").value = $("canned").value.replaceAll("{first_name}", firstName); $("canned").value = ""; } };

async function loadCanned() {
  const data = await call("/canned");
  data.replies.forEach(r => { const o = document.createElement("option"); o.value = r.text; o.textContent = r.title; $("canned").appendChild(o); });
}

(async () => {
  try { showDesk(await call("/me")); loadCanned(); } catch (e) { showSignIn(); }
  poll();
})();
