-- Argo CD health check for stompgate.io/StompGateway.
-- Install: argocd-cm data key `resource.customizations.health.stompgate.io_StompGateway`.
-- Healthy only when the operator has observed the current generation and Ready is True;
-- Stalled=True is Degraded; anything else (Reconciling, no status yet) is Progressing.
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation or 0
local observed = obj.status.observedGeneration or 0
if observed < generation then
  hs.message = "The operator has not observed generation " .. generation .. " yet"
  return hs
end
local ready, reconciling, stalled, paused = nil, nil, nil, nil
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    -- A condition of an older generation says nothing about this one.
    if c.observedGeneration == nil or c.observedGeneration >= generation then
      if c.type == "Ready" then ready = c end
      if c.type == "Reconciling" then reconciling = c end
      if c.type == "Stalled" then stalled = c end
      if c.type == "Paused" then paused = c end
    end
  end
end
if stalled ~= nil and stalled.status == "True" then
  return { status = "Degraded", message = stalled.reason .. ": " .. stalled.message }
end
if paused ~= nil and paused.status == "True" then
  return { status = "Suspended", message = paused.message }
end
if ready ~= nil and ready.status == "True" then
  return { status = "Healthy", message = ready.message }
end
if reconciling ~= nil and reconciling.status == "True" then
  return { status = "Progressing", message = reconciling.reason .. ": " .. reconciling.message }
end
if ready ~= nil then
  hs.message = ready.reason .. ": " .. ready.message
end
return hs
