// The jobs page: start and cancel through the JSON routes, re-fetch the job list (HTML) while a job runs.
"use strict";

const ACTIVE_EVERY_MS = 1500;
const IDLE_EVERY_MS = 10000;
let timer = null;

function jobsList() {
  return document.getElementById("jobs");
}

function showStatus(text, isError) {
  const status = document.getElementById("form-status");
  status.textContent = text;
  status.classList.toggle("form-status--error", Boolean(isError));
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.message || JSON.stringify(body);
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("jobs?fragment=list", { headers: { Accept: "text/html" }, cache: "no-store" });
    if (response.ok) {
      const openFailures = new Set(
        [...document.querySelectorAll("details.failures")].filter((d) => d.open).map((d) => d.dataset.failures),
      );
      const closedFailures = new Set(
        [...document.querySelectorAll("details.failures")].filter((d) => !d.open).map((d) => d.dataset.failures),
      );
      jobsList().outerHTML = await response.text();
      for (const details of document.querySelectorAll("details.failures")) {
        if (openFailures.has(details.dataset.failures)) details.open = true;
        if (closedFailures.has(details.dataset.failures)) details.open = false;
      }
    }
  } finally {
    schedule();
  }
}

function schedule() {
  const active = jobsList().dataset.active === "true";
  timer = setTimeout(refresh, active ? ACTIVE_EVERY_MS : IDLE_EVERY_MS);
}

async function startJob(event) {
  event.preventDefault();
  const form = event.target;
  const data = new FormData(form);
  const body = {
    project: Number(data.get("project")),
    model: data.get("model"),
    overwrite: data.get("overwrite") === "on",
    source: "page",
  };
  const prompt = (data.get("prompt") || "").trim();
  if (prompt) body.prompt = prompt;
  if (data.get("with_masks")) body.with_masks = data.get("with_masks") === "true";
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  showStatus("Starting…");
  try {
    const response = await fetch("jobs/annotate", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    if (response.ok) {
      const { job_id: jobId } = await response.json();
      showStatus(`Started job ${jobId}.`);
    } else {
      showStatus(`Not started: ${await errorText(response)}`, true);
    }
  } catch (error) {
    showStatus(`Not started: ${error}`, true);
  } finally {
    button.disabled = false;
    refresh();
  }
}

async function cancelJob(button) {
  button.disabled = true;
  const response = await fetch(`jobs/${encodeURIComponent(button.dataset.cancel)}`, {
    method: "DELETE",
    headers: { Accept: "application/json" },
  });
  if (!response.ok) showStatus(`Not cancelled: ${await errorText(response)}`, true);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("start-form").addEventListener("submit", startJob);
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-cancel]");
    if (button) cancelJob(button);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  schedule();
});
