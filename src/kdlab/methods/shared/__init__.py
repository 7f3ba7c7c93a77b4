"""What two methods or more use: the logit losses (:mod:`.logits`), the hint loss
(:mod:`.hint`), attention maps (:mod:`.attention`), spatial matching (:mod:`.spatial`),
bridges between feature maps (:mod:`.bridge`), the relational losses of RKD, SP, CC and IRG
(:mod:`.relations`), SimKD's projector (:mod:`.simkd_projector`, also FCFD+SimKD), pixel-wise
losses on dense maps (:mod:`.dense`) and the detection losses (:mod:`.detection`). What one
method alone uses lives in its folder."""
