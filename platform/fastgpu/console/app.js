// The console's entry: sign in, pick the view (admin or tenant, as GET /whoami says), refresh
// it every few seconds, sign out.
//
// The token lives in sessionStorage only: it survives a reload of this tab and goes with the
// tab; never a cookie (nothing sends it but our own fetch calls), never localStorage, never a
// URL. A 401 on any call (a rotated, revoked or expired token) signs out with the reason.

import { Api, ApiError, describe } from "./api.js";
import { AdminView } from "./admin.js";
import { show } from "./dom.js";
import { TenantView } from "./tenant.js";

const TOKEN_KEY = "fastgpu.token";
const REFRESH_MS = 5000;
const $ = (id) => document.getElementById(id);

let session = null; // {api, view, timer, busy}
let retry = null; // a sign-in waiting for the server to come back

function banner(text) {
  $("banner").textContent = text || "";
  show($("banner"), Boolean(text));
}

function showSignIn(error) {
  show($("signin"), true);
  show($("who"), false);
  const line = $("signin-error");
  line.textContent = error || "";
  show(line, Boolean(error));
  $("token").value = "";
  $("token").focus();
}

function signOut(reason) {
  clearTimeout(retry);
  sessionStorage.removeItem(TOKEN_KEY);
  if (session) {
    clearTimeout(session.timer);
    session.view.close();
    session = null;
  }
  delete document.body.dataset.view;
  delete document.body.dataset.tenantsFilled;
  delete document.body.dataset.ready;
  banner("");
  showSignIn(reason);
}

async function refresh() {
  const current = session;
  if (!current || current.busy) return;
  clearTimeout(current.timer);
  current.busy = true;
  const errors = (await current.view.refresh()).filter(Boolean);
  current.busy = false;
  if (session !== current) return; // signed out meanwhile
  const denied = errors.find((e) => e instanceof ApiError && e.status === 401);
  if (denied) {
    signOut(describe(denied));
    return;
  }
  // Each card shows its own error; the banner is for the server being out of reach.
  const down = errors.find((e) => e instanceof ApiError && e.status === 0);
  banner(down ? describe(down) : "");
  $("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.ready = "1";
  current.timer = setTimeout(tick, REFRESH_MS);
}

function tick() {
  // A hidden tab asks nothing; it refreshes when shown again.
  if (!document.hidden) refresh();
}

async function begin(token) {
  clearTimeout(retry);
  if (session) signOut("");
  const api = new Api(token);
  let who;
  try {
    who = await api.get("/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut(describe(err));
    } else {
      // The server is down or busy: keep the token and try again.
      banner(describe(err));
      retry = setTimeout(() => begin(token), REFRESH_MS);
    }
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  banner("");
  show($("signin"), false);
  $("who-name").textContent = who.is_admin ? "operator" : who.tenant;
  $("who-role").textContent = who.is_admin ? "admin" : "tenant";
  show($("who"), true);
  const view = who.is_admin ? new AdminView(api) : new TenantView(api, who);
  document.body.dataset.view = who.is_admin ? "admin" : "tenant";
  session = { api, view, timer: null, busy: false };
  await refresh();
}

function main() {
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (token) begin(token);
  });
  $("signout").addEventListener("click", () => signOut(""));
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && session) refresh();
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) begin(token);
  else showSignIn("");
}

main();
