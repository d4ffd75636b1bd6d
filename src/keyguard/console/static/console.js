// keyguard console: the little that needs a script. Every page works without it.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Copy: the reveal-once panel's secret to the clipboard.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const status = document.getElementById("copy-status");
      try {
        await navigator.clipboard.writeText(field.value);
        status.textContent = "Copied to the clipboard.";
      } catch {
        field.select();
        status.textContent = "Select the key and copy it with your keyboard.";
      }
    });
  }
  // The scope matrix and the IP list apply only when their box is checked.
  const toggles = [["scopes_enabled", "scope-matrix"], ["restricted", "permitted-ips-field"]];
  for (const [boxId, partId] of toggles) {
    const box = document.getElementById(boxId);
    const part = document.getElementById(partId);
    if (!box || !part) continue;
    const show = () => part.classList.toggle("muted", !box.checked);
    box.addEventListener("change", show);
    show();
  }
});
