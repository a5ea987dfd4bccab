# PG fine-tuning of detectron2's "new baselines" Mask R-CNN R50-FPN 100ep LSJ (box AP 44.6,
# mask AP 40.3 in detectron2's MODEL_ZOO.md), as a LazyConfig, starting from that model's final
# weights. Train with lazy_train_net.py:
#   python lazy_train_net.py --config-file pgdet/configs/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ.py \
#       --num-gpus 8
#
# Model, data (coco_2017_train -> coco_2017_val, large-scale jitter at 1024 px), optimizer and
# AMP: detectron2's own new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py, loaded from the installed
# detectron2 (nothing copied). Changed here:
# - the ROI heads are pgdet's PGROIHeads (same arguments as StandardROIHeads) and the box
#   predictor pgdet's PGFastRCNNOutputLayers (same arguments as FastRCNNOutputLayers, plus the
#   PG options: pg_enabled / pg_gamma / pg_reward_scale = MODEL.PG.ENABLED / GAMMA /
#   REWARD_SCALE, pg_settings.<key> = MODEL.PG.<KEY> in lower case, validated with the YAML
#   path's messages). The baseline D of the reward uses the predictor's own test_score_thresh,
#   test_nms_thresh and test_topk_per_image, so the PG options hold no thresholds to set;
# - training data go through pgdet's checks (bad boxes clipped or dropped with counts in the
#   log, class ids checked against num_classes, unreadable images named);
# - the schedule is the paper's PG stage scaled to this model (Base-PG-3x.yaml for the YAML
#   configs): the paper runs 22.5k iterations of 16 images (360k images, ~3 COCO epochs) at 1/10
#   of the training learning rate, x0.1 after 2/3. This model trained 64 images per batch at
#   lr 0.1 (184,375 iterations = 100 epochs), so the stage keeps its images, not its iterations:
#   360k / 64 = 5625 iterations, x0.1 at 3750, lr 0.1 / 10 = 0.01, no warm-up (a continuation of
#   a converged model), the model's weight decay 4e-5. total_batch_size 64 is over all GPUs.
# The mask head trains as in detectron2; the policy gradient changes only the box classifier's loss.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from pgdet.data import CheckedDatasetMapper, load_training_dicts
from pgdet.modeling import PGFastRCNNOutputLayers, PGROIHeads
from pgdet.modeling.pg import PGSettings

_base = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model, dataloader, optimizer, train = _base.model, _base.dataloader, _base.optimizer, _base.train

model.roi_heads._target_ = PGROIHeads
model.roi_heads.box_predictor._target_ = PGFastRCNNOutputLayers
model.roi_heads.box_predictor.update(
    pg_enabled=True,
    pg_gamma=1.0,
    pg_reward_scale=1.0,
    # every other MODEL.PG option at its default (pgdet/config.py), e.g.
    # model.roi_heads.box_predictor.pg_settings.reward_estimator=swap on the command line
    pg_settings=L(PGSettings)(),
    pg_seed="${train.seed}",
)

dataloader.train.dataset = L(load_training_dicts)(
    names="coco_2017_train", num_classes="${model.roi_heads.num_classes}", filter_empty=True
)
dataloader.train.mapper._target_ = CheckedDatasetMapper

train.init_checkpoint = (
    "detectron2://new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ/42047764/model_final_bb69de.pkl"
)
train.output_dir = "output/lazy/pg_mask_rcnn_R_50_FPN_100ep_LSJ"
train.seed = -1  # detectron2's "random": lazy_train_net.py draws one seed for the run and logs it
train.max_iter = 5625
train.eval_period = 5625
train.checkpointer.period = 1875  # each COCO epoch

optimizer.lr = 0.01
# x0.1 after 2/3 of train.max_iter (3750 of 5625): detectron2 runs a scheduler over the fraction
# of training done, so milestones [2, 3] mean 2/3 whatever max_iter is. No warm-up.
lr_multiplier = L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[2, 3])
