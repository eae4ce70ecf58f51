// Start a run of this workflow: POST /api/runs with the JSON input, then open the run's page.
"use strict";
(() => {
  const form = document.getElementById("start");
  const err = document.getElementById("start-error");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.hidden = true;
    let input;
    try {
      input = JSON.parse(form.elements.input.value || "{}");
      if (input === null || typeof input !== "object" || Array.isArray(input)) throw new Error("the input must be a JSON object");
    } catch (x) {
      err.textContent = "not a JSON object: " + x.message;
      err.hidden = false;
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    const r = await SP.post("/api/runs", { workflow: form.dataset.workflow, input });
    button.disabled = false;
    if (!r.ok) {
      err.textContent = r.data.error || "HTTP " + r.status;
      err.hidden = false;
      return;
    }
    location.href = "/runs/" + r.data.id;
  });
})();
