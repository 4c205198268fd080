// Swagger UI for reading the API document; "try it out" is off (calls need an API key,
// which the console never puts in a page).
"use strict";
window.addEventListener("load", function () {
  var node = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({ url: node.dataset.url, domNode: node, supportedSubmitMethods: [], deepLinking: false });
});
